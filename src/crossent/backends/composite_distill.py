"""The distillation losses on the composite backend: the steps of `backends/divergence.py` as a
plain composition of differentiable torch ops in the compute dtype, over the full (N, V) logits
(torch.func, torch.compile, second derivatives; the memory of the torch composition). Also the
helpers every backend's distillation shares: the 'mean' denominator and the counted rows."""

from __future__ import annotations

import torch
import torch.nn.functional as _torch_F

from .._options import DistillationOptions, LossOptions
from . import divergence as dv
from . import rows
from .common import compute_dtype


def out_dtype(input: torch.Tensor, opts: DistillationOptions) -> torch.dtype:
    """The loss's dtype: the student input's (float32 under autocast: opts.dtype)."""
    return input.dtype if opts.dtype is None else torch.promote_types(input.dtype, opts.dtype)


def counted_rows(n: int, target, opts: DistillationOptions, device) -> torch.Tensor:
    """(N,) bool: the rows that count (target not ignore_index; every row without a target)."""
    if target is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return target != opts.ignore_index


def topk_counted(teacher_ids, opts: DistillationOptions) -> torch.Tensor:
    """(N,) bool: rows with at least one id that is not ignore_index."""
    return (teacher_ids != opts.ignore_index).any(1)


def denominator(counted: torch.Tensor, opts: DistillationOptions, acc) -> torch.Tensor | None:
    """'mean''s denominator: the caller's normalizer, else the number of counted rows."""
    if opts.reduction != "mean":
        return None
    if isinstance(opts.normalizer, torch.Tensor):
        return opts.normalizer.to(device=counted.device, dtype=acc).reshape(())
    if opts.normalizer is not None:
        return torch.full((), float(opts.normalizer), dtype=acc, device=counted.device)
    return counted.sum().to(acc)


def _reduce(losses, counted, opts: DistillationOptions, dtype):
    if opts.reduction == "none":
        return losses.to(dtype)
    total = losses.sum()
    den = denominator(counted, opts, losses.dtype)
    return (total / den if den is not None else total).to(dtype)


def _capped(x, cap, acc):
    return rows.capped(x, LossOptions(softcap=cap), acc)[0]


def linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
                             teacher_linear_bias, target, opts: DistillationOptions) -> torch.Tensor:
    """The dense loss through autograd (crossent.reference.linear_distillation_loss's contract):
    the teacher's side is computed without a graph."""
    acc = compute_dtype(input.dtype)
    z1 = _capped(_torch_F.linear(input, linear_weight, linear_bias), opts.softcap, acc)  # (N, V)
    counted = counted_rows(input.shape[0], target, opts, input.device)
    loss = torch.zeros(input.shape[0], dtype=acc, device=input.device)
    lp1 = None
    if opts.soft_weight != 0.0:
        with torch.no_grad():
            u = _capped(_torch_F.linear(teacher_input, teacher_linear_weight, teacher_linear_bias),
                        opts.teacher_softcap, acc)
            lq = dv.log_probs(u / opts.temperature if opts.temperature != 1.0 else u)
        lp = dv.log_probs(z1 / opts.temperature if opts.temperature != 1.0 else z1)
        loss = loss + opts.soft_weight * dv.divergence(lp, lq, opts.beta)
        lp1 = lp if opts.temperature == 1.0 else None
    if opts.hard_weight != 0.0:
        lp1 = dv.log_probs(z1) if lp1 is None else lp1
        picked = lp1.gather(1, torch.where(counted, target, 0).unsqueeze(1)).squeeze(1)
        loss = loss - opts.hard_weight * picked
    loss = torch.where(counted, loss, 0.0)
    return _reduce(loss, counted, opts, out_dtype(input, opts))


def rest_log_sum_exp(a: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """log sum over the classes outside the support of exp(a) (n,), -inf where there are none;
    relative to the rest's own max (a rest far below the support does not underflow)."""
    rest = torch.where(inside, dv.NEG_INF, a)
    m = rest.detach().amax(1, keepdim=True)
    ref = dv.reference_of(m)
    out = ref.squeeze(1) + torch.log(rows.row_sum(torch.exp(rest - ref)))
    return torch.where(m.squeeze(1) == dv.NEG_INF, dv.NEG_INF, out)


def linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs, linear_bias,
                                  opts: DistillationOptions) -> torch.Tensor:
    """The top-k loss through autograd (crossent.reference.linear_topk_distillation_loss)."""
    acc = compute_dtype(input.dtype)
    z = _capped(_torch_F.linear(input, linear_weight, linear_bias), opts.softcap, acc)
    if opts.temperature != 1.0:
        z = z / opts.temperature
    valid = teacher_ids != opts.ignore_index
    counted = valid.any(1)
    safe = dv.support_index(teacher_ids, valid)
    # A row with no id is computed as if its first entry were class 0 with probability 1, then
    # masked: its -inf sums would otherwise meet autograd's second derivatives (nan * 0 = nan).
    first = torch.arange(valid.shape[1], device=valid.device) == 0
    valid = valid | (~counted.unsqueeze(1) & first)
    lq = torch.where(counted.unsqueeze(1), teacher_log_probs.detach().to(acc), 0.0)
    a = z - dv.reference_of(z.detach().amax(1, keepdim=True))  # (N, V), <= 0
    a_s = a.gather(1, safe)
    rest = None
    if opts.tail:
        inside = torch.zeros(a.shape, dtype=torch.int32, device=a.device).scatter_add_(
            1, safe, valid.to(torch.int32)) > 0
        rest = rest_log_sum_exp(a, inside)
    loss = dv.topk_row_terms(a_s, rest, lq, valid, opts.tail)[0]
    loss = torch.where(counted, loss, 0.0)
    return _reduce(loss, counted, opts, out_dtype(input, opts))
