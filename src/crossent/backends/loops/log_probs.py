"""Per-token log-probabilities and entropy of existing logits (*, C), fused: TRL's
``selective_log_softmax`` and ``entropy_from_logits`` in one pass (the math:
backends/rows_log_probs.py).

Forward reads the logits once, chunk by chunk of rows (the backend's `LogProbKernels`), and
keeps per row only what backward needs: the row max m, log s and the entropy H (3 numbers per
row). The outputs' gradient depends on the per-token upstream gradients (g of the log-probs, h of
the entropies) that only backward knows, so backward reads the logits a second time and writes
their gradient once: g [c = t] - p_c (g + h (log p_c + H)). Peak memory beyond the logits and
their gradient: one chunk of work buffers (~1M elements per chunk on the CPU), never an N x C
temporary; TRL's composition keeps log_softmax's N x C output (and builds softmax's in its
entropy) alive. A gradient that is not asked for (entropy for logging only) costs nothing.

Leading dims are walked without copies where they do not collapse into one (a (B, T-1, V) slice
of (B, T, V) logits is read as B blocks of T-1 rows). Deterministic (fixed-order row sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import LossOptions
from .. import autograd, composite, rows, rows_log_probs
from ..common import compute_dtype
from .kernels import RowKernels


@dataclass(frozen=True)
class LogProbsCall:
    """One call of log_probs on logits: everything but its tensors."""

    opts: LossOptions
    entropy: bool
    kernels: RowKernels
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)


def _collapsible(x: torch.Tensor) -> bool:
    """Whether x's leading dims view as one (x.view(-1, C) would succeed)."""
    size, stride = x.shape[:-1], x.stride()[:-1]
    expected = None
    for n, st in zip(reversed(size), reversed(stride)):
        if n == 1:
            continue
        if expected is not None and st != expected:
            return False
        expected = st * n
    return True


def row_blocks(x: torch.Tensor) -> list:
    """2-D views (rows, C) covering x (*, C) in the row-major order of its leading dims, without
    copies."""
    if x.dim() <= 2 or _collapsible(x):
        return [x.reshape(-1, x.shape[-1])]
    return [block for i in range(x.shape[0]) for block in row_blocks(x[i])]


def _chunks(x: torch.Tensor, rows_per_chunk: int):
    """(start row, end row, chunk (r, C)) over every row of x (*, C)."""
    start = 0
    for block in row_blocks(x):
        for i in range(0, block.shape[0], rows_per_chunk):
            j = min(i + rows_per_chunk, block.shape[0])
            yield start + i, start + j, block[i:j]
        start += block.shape[0]


def _targets(index: torch.Tensor, opts: LossOptions, c: int, acc) -> rows.Targets:
    return rows.targets(index, None, None, opts, acc, num_classes=c)


def forward_pass(x: torch.Tensor, index: torch.Tensor, call: LogProbsCall):
    """(log_probs (N,), entropy (N,) or None, stats (3, N): m, log s, H) of x (*, C) and its
    flat targets (N,), in the compute dtype."""
    acc = compute_dtype(x.dtype)
    c = x.shape[-1]
    n = index.numel()
    kernels = call.kernels.log_probs
    step = kernels.logits_rows(n, c, x.device)
    buffers = kernels.buffers(min(step, n) * c, x.dtype, call.opts, call.entropy, x.device, scratch=False)
    tg = _targets(index, call.opts, c, acc)
    stats = torch.zeros(3, n, dtype=acc, device=x.device)
    lp = torch.empty(n, dtype=acc, device=x.device)
    for i, j, chunk in _chunks(x, step):
        lp[i:j], h, stats[0, i:j], stats[1, i:j] = kernels.forward(
            chunk, tg.rows(slice(i, j)), call.opts, entropy=call.entropy, buffers=buffers)
        if h is not None:
            stats[2, i:j] = h
    return lp, stats[2].clone() if call.entropy else None, stats


def backward_pass(x, index, call: LogProbsCall, stats, g, h) -> torch.Tensor:
    """The gradient (x's shape and dtype) of sum_i g_i log_probs_i + h_i entropy_i."""
    acc = compute_dtype(x.dtype)
    c = x.shape[-1]
    n = index.numel()
    kernels = call.kernels.log_probs
    step = kernels.logits_rows(n, c, x.device)
    buffers = kernels.buffers(min(step, n) * c, x.dtype, call.opts, h is not None, x.device, scratch=False)
    tg = _targets(index, call.opts, c, acc)
    g = rows_upstream(g, tg, acc)
    h = rows_upstream(h, tg, acc)
    grad = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    flat = grad.view(-1, c)
    for i, j, chunk in _chunks(x, step):
        cut = slice(i, j)
        kernels.backward(chunk, tg.rows(cut), call.opts, stats[0, cut], stats[1, cut], stats[2, cut],
                         None if g is None else g[cut], None if h is None else h[cut],
                         grad=flat[cut], buffers=buffers)
    return grad


def rows_upstream(grad, tg, acc):
    """A per-row upstream gradient, flat, in the compute dtype, 0 on ignored rows; None stays."""
    return rows_log_probs.upstream(grad.reshape(-1) if grad is not None else None, tg, acc)


def weighted_outputs(outputs, g, h):
    """sum_i g_i lp_i + h_i H_i as one differentiable scalar (second derivatives)."""
    lp, ent = outputs if isinstance(outputs, tuple) else (outputs, None)
    total = lp.new_zeros(())
    if g is not None:
        total = total + (lp * g.to(lp.dtype)).sum()
    if h is not None and ent is not None:
        total = total + (ent * h.to(ent.dtype)).sum()
    return total


class _LogProbsFn(torch.autograd.Function):
    """Forward: outputs and row statistics; backward: the logits' gradient from them and the
    per-token upstream gradients (recomputing nothing but the softmax); a second derivative
    (create_graph=True) differentiates the composite formulas."""

    @staticmethod
    def forward(call, input, index):
        lp, ent, stats = forward_pass(input, index, call)
        call.handover.put(stats)
        shape = input.shape[:-1]
        return (lp.view(shape), ent.view(shape)) if call.entropy else lp.view(shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, index = inputs
        ctx.call = call
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, index, call.handover.take())

    @staticmethod
    def backward(ctx, g, h=None):
        input, index, stats = ctx.saved_tensors
        call = ctx.call
        if (g is None and h is None) or not ctx.needs_input_grad[1]:
            return None, None, None
        if torch.is_grad_enabled():  # create_graph=True: the composite formulas, with a graph
            with torch.enable_grad():
                out = composite.log_probs(input, index, call.opts, call.entropy)
                return None, torch.autograd.grad(weighted_outputs(out, g, h), input, create_graph=True)[0], None
        return None, backward_pass(input, index.reshape(-1), call, stats, g, h), None


def log_probs(input, target, opts: LossOptions, entropy: bool, *, kernels: RowKernels):
    """Backend entry (checked arguments): input (*, C) logits, target (*) int64 class indices.
    Returns log_probs (*) in the compute dtype, or (log_probs, entropy)."""
    call = LogProbsCall(opts, entropy, kernels)
    index = target.reshape(-1)
    if torch.is_grad_enabled() and input.requires_grad:
        return _LogProbsFn.apply(call, input, index)
    lp, ent, _ = forward_pass(input, index, call)
    shape = input.shape[:-1]
    return (lp.view(shape), ent.view(shape)) if entropy else lp.view(shape)

