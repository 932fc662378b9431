"""The row math (`backends/rows.py`) of a vocabulary split over ranks: per-row partial statistics,
their two all-reduces, the global loss, and each rank's exact gradient of its own logits.

Rank r holds the logits z_ic of its classes c in [start, stop) (after the softcap, if any:
z = s tanh(x / s)). One sample i has, over all C classes (w: class weights, 1 without; eps:
label smoothing; zl: z_loss; v_i = 0 for an ignored target, else 1; t'_ic = (1-eps) t_ic + eps/C)::

    lse_i = M_i + log S_i,   M_i = max_r m_ir,   S_i = sum_r exp(m_ir - M_i) s_ir
            m_ir = max_{c in r} z_ic,  s_ir = sum_{c in r} exp(z_ic - m_ir)
    hard  l_i = v_i ((1-eps) w_t (lse_i - z_it) + eps/C (W lse_i - sum_c w_c z_ic)) + v_i zl lse_i^2
    soft  l_i = A_i lse_i - B_i + zl lse_i^2,   A_i = sum_c w_c t'_ic,  B_i = sum_c w_c t'_ic z_ic

Everything that sums over classes splits into per-rank partials: s_ir (rescaled by exp(m_ir - M_i)
once M_i is known), z_it (only the rank that owns t contributes; the others add 0, so the sum is
exact), sum_c w_c z_ic, A_i, B_i. W = sum_c w_c and w_t come from the full (replicated) class
weight and the global targets: no collective. So the forward runs

    all_reduce MAX   m   [M]          then   all_reduce SUM   [k, M]  (k = 2 hard, 3 with eps > 0
                                                                       or probability targets)

and z_loss, softcap, ignore_index and the 'mean' denominator need nothing more. Megatron's
label-smoothing bug (issues 737, 7464) is taking C and the sum over classes locally; here eps/C
uses the global C and the class sum is one of the partials.

Gradient (rank-local, no collective): with p_ic = exp(z_ic - lse_i) and a per-sample factor g_i
(grad_output, times 1/den for 'mean')::

    dl_i/dz_ic = a_i p_ic - b_ic
      hard  a_i = v_i ((1-eps) w_t + eps/C W + 2 zl lse_i),  b_ic = v_i ((1-eps) w_t [c = t_i] + eps/C w_c)
      soft  a_i = A_i + 2 zl lse_i,                          b_ic = w_c t'_ic
    dz/dx = 1 - (z / s)^2 under a softcap.

The steps themselves are `backends.rows`' (class_sums, row_loss, gradient_): this module adds
the per-shard statistics and their combination over ranks.
"""

from __future__ import annotations

import torch

from .._options import LossOptions
from ..backends import rows
from ..backends.common import deterministic_sum, mean_denominator, safe_reciprocal
from . import _comm
from ._layout import Comm, Vocab

Targets = rows.Targets


def prepare(index, probs, weight, vocab: Vocab, opts: LossOptions, acc) -> rows.Targets:
    """The per-sample values for all M samples at once (one gather, not one per chunk)."""
    return rows.targets(index, probs, weight, opts, acc, num_classes=vocab.num_classes,
                        classes=(vocab.start, vocab.stop))


def num_partials(opts: LossOptions) -> int:
    return 3 if opts.soft or opts.label_smoothing > 0.0 else 2


def cap(x: torch.Tensor, opts: LossOptions, acc):
    """(z, tanh(x / s) or None): the chunk's logits in the compute dtype, softcapped. z may be x
    itself (float32, no softcap): nothing here writes into it."""
    return rows.capped(x, opts, acc)


def chunk_partials(z: torch.Tensor, tg: rows.Targets, opts: LossOptions):
    """One chunk of rows, z (n, V_r) compute dtype -> (m (n,), partials (k, n)): the local row max
    and [s, *rows.class_sums], each relative to m (to 0 for a row with no finite logit here: an
    empty shard, or every local logit masked with -inf)."""
    n, v = z.shape
    parts = z.new_zeros(num_partials(opts), n)
    if v == 0:  # an empty shard: m = -inf, every partial 0 (exp(-inf - M) s = 0 later)
        return z.new_full((n,), float("-inf")), parts
    m = z.amax(1)
    ref = torch.where(m == float("-inf"), 0.0, m).unsqueeze(1)
    r = z - ref
    parts[0] = rows.row_sum(r.exp())
    for k, part in enumerate(rows.class_sums(r, ref, tg, opts), 1):
        parts[k] = part
    return m, parts


def combine(m: torch.Tensor, parts: torch.Tensor, tg: rows.Targets, opts: LossOptions, comm: Comm):
    """The two forward collectives: (the global row max M, log s, the summed partials (k, M)),
    the partials rebased from each rank's reference to M before they are added (`rows.rebase`)."""
    m_all = _comm.all_reduce_max(m, comm.tp)
    ref = torch.where(m == float("-inf"), 0.0, m)
    shift = torch.where(m == float("-inf"), 0.0, ref - m_all)  # (-inf - M = -inf: 0 instead)
    parts[0] = parts[0] * torch.exp(shift)  # exp(m - M) <= 1
    block_w = rows.block_weight(tg) if not opts.soft and opts.label_smoothing > 0.0 else None
    parts[1:] = torch.stack(rows.rebase(list(parts[1:]), shift, tg, opts, block_w))
    parts = _comm.all_reduce_sum(parts, comm.tp, comm.deterministic)
    return m_all, torch.log(parts[0]), parts


def losses(m_all, log_s, parts, tg: rows.Targets, opts: LossOptions):
    """(per-sample losses l (M,), the gradient's a (M,), lse (M,)) from the global statistics."""
    return rows.row_loss(m_all, log_s, list(parts[1:]), tg, opts)


def chunk_grad(z: torch.Tensor, th, m_all, log_s, a, g, tg: rows.Targets, opts: LossOptions,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """d(sum_i g_i l_i)/dx on one chunk (n, V_r), compute dtype; z are the chunk's (capped)
    logits (th their tanh under a softcap), m_all/log_s/a (n,) the global row max, log of the
    sum of exps and the gradient's factor, g (n,) or a 0-d factor. Written into ``out`` (the
    caller's gradient rows, when they have the compute dtype: no extra copy) or a fresh buffer;
    never over z (unless z is out). p = exp((z - M) - log s), not exp(z - lse): lse's rounding
    at a large common offset would be every p's."""
    e = torch.sub(z, m_all.unsqueeze(1), out=out).sub_(log_s.unsqueeze(1)).exp_()  # the global softmax
    return rows.gradient_(e, a * g, g, tg, opts, th)


def reduce(loss, tg: rows.Targets, weight, opts: LossOptions, num_samples: int, comm: Comm, acc):
    """(the scalar value, its 0-d gradient factor 1/den or 1) of 'sum' / 'mean', summed over the
    data-parallel groups of a DTensor input (one SUM of [sum, den]: 2 numbers)."""
    total = deterministic_sum(loss)
    den = None
    if opts.reduction == "mean":
        den = mean_denominator(tg.index, weight, opts, num_samples, acc, loss.device)
    if comm.dp:
        # a caller's normalizer is already global: only the sum and the count are local
        own_den = opts.reduction == "mean" and opts.normalizer is None
        pair = torch.stack([total, den if own_den else torch.zeros_like(total)])
        for group in comm.dp:
            pair = _comm.all_reduce_sum(pair, group, comm.deterministic)
        total = pair[0]
        if own_den:
            den = pair[1]
    if den is None:
        return total, torch.ones((), dtype=acc, device=loss.device)
    return total / den, safe_reciprocal(den)  # all ignored: nan loss (as torch), 0 gradient


def fresh(t: torch.Tensor) -> torch.Tensor:
    """A Function's output that is no view (FSDP2 warns that a view returned from a module's
    forward loses its pre-backward hook under in-place ops; a reshape of the losses is a view)."""
    return t.clone() if t._base is not None else t
