"""vocab_parallel_cross_entropy: cross-entropy of logits whose class dim is split over ranks.

Contract (C classes over the W ranks of ``group``; x_r this rank's (N, V_r[, d1..dk]) slice)::

    vocab_parallel_cross_entropy(x_r, t, w, ...)  ==  crossent.cross_entropy(cat_r(x_r, dim=1), t, w, ...)

in value (the same on every rank) and in the gradient w.r.t. x_r (this rank's slice of the full
gradient), for every option: class weights, ignore_index, label smoothing (with the global C),
probability targets (sharded like x), z_loss, softcap, reductions 'none'/'sum'/'mean' and a
``normalizer`` ('mean' divides by it: ``cross_entropy(..., reduction='sum') / normalizer``).
The math and the two collectives: `_stats`. The backward runs no collective.

Memory: O(chunk) float32 temporaries per pass over rows of ~1M elements, plus per sample a few
numbers; the gradient is one (N, V_r) tensor of the input's dtype. K-dim inputs are copied once to
rows (N d1..dk, V_r) (and their gradient back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import _checks
from .._checks import distributed as _dchecks
from .._options import LossOptions
from ..backends.autograd import Handover
from ..backends.common import compute_dtype, output_dtype
from . import _comm, _layout, _stats

# Rows per pass: ~1M elements of float32 temporaries (the single-device kernel's chunk, which
# stays in a CPU's L3 cache; backends/chunked/kernel.py measured it).
CHUNK_ELEMENTS = 1 << 20

_FN = "vocab_parallel_cross_entropy"


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) as is; (N, C, d1..dk) -> (N d1..dk, C)."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    samples = t.shape[0] * math.prod(t.shape[2:])  # (explicit: -1 is ambiguous for an empty shard)
    return t.movedim(1, -1).reshape(samples, t.shape[1])


def _unrows(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) <= 2:
        return g.reshape(shape)
    return g.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _spans(m: int, v: int):
    step = max(1, CHUNK_ELEMENTS // max(v, 1))
    return [(i, min(i + step, m)) for i in range(0, m, step)]


def _targets(index, probs, weight, vocab, opts, acc):
    return _stats.prepare(index.reshape(-1) if index is not None else None,
                          _rows(probs) if probs is not None else None, weight, vocab, opts, acc)


def _forward(input, index, probs, weight, vocab, opts, comm):
    """(value or per-sample losses in the compute dtype, (the rows' global max, log s) (2, M), the
    gradient's a, factor)."""
    acc = compute_dtype(input.dtype)
    x = _rows(input)
    m_rows = x.shape[0]
    tg = _targets(index, probs, weight, vocab, opts, acc)
    m = torch.empty(m_rows, dtype=acc, device=x.device)
    parts = torch.empty(_stats.num_partials(opts), m_rows, dtype=acc, device=x.device)
    for i, j in _spans(m_rows, x.shape[1]):
        z, _ = _stats.cap(x[i:j], opts, acc)
        m[i:j], parts[:, i:j] = _stats.chunk_partials(z, tg.rows(slice(i, j)), opts)
    m_all, log_s, parts = _stats.combine(m, parts, tg, opts, comm)
    loss, a, _ = _stats.losses(m_all, log_s, parts, tg, opts)
    stats = torch.stack([m_all, log_s])  # (2, M): the global softmax of each row, for backward
    if opts.reduction == "none":
        return loss, stats, a, None
    value, factor = _stats.reduce(loss, tg, weight, opts, m_rows, comm, acc)
    return value, stats, a, factor


def _input_grad(input, index, probs, weight, vocab, opts, stats, a, g):
    """This rank's gradient of sum_i g_i l_i w.r.t. its logits; g (M,) or 0-d."""
    acc = compute_dtype(input.dtype)
    x = _rows(input)
    tg = _targets(index, probs, weight, vocab, opts, acc)
    out = torch.empty(x.shape, dtype=input.dtype, device=x.device)
    per_sample = g.dim() > 0
    for i, j in _spans(x.shape[0], x.shape[1]):
        z, th = _stats.cap(x[i:j], opts, acc)
        direct = out.dtype == acc  # write straight into the gradient rows (no copy)
        grad = _stats.chunk_grad(z, th, stats[0, i:j], stats[1, i:j], a[i:j], g[i:j] if per_sample else g,
                                 tg.rows(slice(i, j)), opts, out=out[i:j] if direct else None)
        if not direct:
            out[i:j] = grad
    return _unrows(out, input.shape)


class _VocabParallelCrossEntropyFn(torch.autograd.Function):
    """Forward: the two all-reduces and the loss; backward: the local gradient, no collective.
    Not twice differentiable (the statistics come from collectives): create_graph=True raises."""

    @staticmethod
    def forward(call, input, index, probs, weight):
        value, stats, a, factor = _forward(input, index, probs, weight, call.vocab, call.opts, call.comm)
        call.handover.put((stats, a, factor))
        return _stats.fresh(value.reshape(call.out_shape).to(call.out_dtype))

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, index, probs, weight = inputs
        stats, a, factor = call.handover.take()
        ctx.save_for_backward(input, index, probs, weight, stats, a, factor)
        ctx.call = call

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True
            _dchecks.no_second_derivative(_FN)
        input, index, probs, weight, stats, a, factor = ctx.saved_tensors
        acc = compute_dtype(input.dtype)
        g = grad_out.to(acc).reshape(-1) if factor is None else grad_out.to(acc).reshape(()) * factor
        grad = _input_grad(input, index, probs, weight, ctx.call.vocab, ctx.call.opts, stats, a, g)
        return None, grad, None, None, None


@dataclass(frozen=True)
class _Call:
    """One call of the vocab-parallel logits loss: everything but its tensors."""

    vocab: _layout.Vocab
    opts: LossOptions
    comm: _layout.Comm
    out_shape: tuple
    out_dtype: torch.dtype
    handover: Handover = field(default_factory=Handover, compare=False)


def local_loss(fn, input, target, weight, vocab, comm, *, ignore_index, reduction, label_smoothing,
               z_loss, softcap, normalizer, dtype):
    """The loss on local tensors with a known layout (checked here; shared with the DTensor path)."""
    input = _checks.logits_input(fn, input)
    dtype, weight, ignore_index, target, soft = _checks.logits_loss_arguments(  # torch's refusals first
        fn, input, target, weight, vocab.num_classes, ignore_index, dtype)
    _dchecks.no_grad_through(fn, "target", target)
    _dchecks.no_grad_through(fn, "weight", weight)
    opts = _checks.loss_options(
        fn, ignore_index=ignore_index, reduction_=reduction, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, normalizer=normalizer, soft=soft, dtype=dtype,
    )
    index, probs = (None, target) if soft else (target, None)
    out_dtype = output_dtype(input, target, opts)
    sample_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
    out_shape = sample_shape if opts.reduction == "none" else ()
    if torch.is_grad_enabled() and input.requires_grad:
        call = _Call(vocab, opts, comm, out_shape, out_dtype)
        return _VocabParallelCrossEntropyFn.apply(call, input, index, probs, weight)
    value = _forward(input, index, probs, weight, vocab, opts, comm)[0]
    return value.reshape(out_shape).to(out_dtype)


def vocab_parallel_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    group=None,
    vocab_range: tuple[int, int] | None = None,
    num_classes: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    deterministic: bool = False,
) -> torch.Tensor:
    fn = _FN
    reduction = _checks.deprecated_reduction(reduction)
    deterministic = _dchecks.deterministic(fn, deterministic)
    options = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                   z_loss=z_loss, softcap=softcap, normalizer=normalizer, dtype=dtype)
    if _dchecks.is_dtensor(input):
        return _dtensor_loss(fn, input, target, weight, deterministic, options)
    comm = _layout.Comm(_dchecks.group(fn, group), (), deterministic)
    weight = _dchecks.replicated(fn, "weight", weight)
    input = _checks.logits_input(fn, input)
    local_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    vocab = _layout.resolve_vocab(fn, comm.tp, local_classes, vocab_range, num_classes, weight)
    if _comm.size(comm.tp) == 1 and normalizer is None:
        # one rank holds every class: the single-device fused loss (cross_entropy has no normalizer)
        from ..functional import cross_entropy

        return cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                             label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, dtype=dtype)
    return local_loss(fn, input, target, weight, vocab, comm, **options)


def _dtensor_loss(fn, input, target, weight, deterministic, options):
    """A DTensor input: local tensors in, a DTensor out (global shape; see DTensorCall)."""
    from torch.distributed.tensor import DTensor

    class_dim = 0 if input.dim() == 1 else 1
    call = _layout.unpack_dtensor(fn, input, class_dim, deterministic)
    soft = (isinstance(target, torch.Tensor) and target.is_floating_point()
            and tuple(target.shape) == tuple(input.shape))
    target = _layout.local_companion(fn, "target", target, call, like_input=soft)
    weight = _layout.local_companion(fn, "weight", weight, call, like_input=False)
    loss = local_loss(fn, input.to_local(), target, weight, call.vocab, call.comm, **options)
    sample_shape = tuple(input.shape[:class_dim]) + tuple(input.shape[class_dim + 1:])
    shape = sample_shape if loss.dim() else ()
    stride = tuple(math.prod(shape[k + 1:]) for k in range(len(shape)))
    return DTensor.from_local(loss, call.mesh, call.output_placements(options["reduction"], loss.dim()),
                              run_check=False, shape=torch.Size(shape), stride=stride)


vocab_parallel_cross_entropy.__doc__ = """Cross-entropy of logits whose class dim is split over the ranks of ``group``.

    Equivalent to ``crossent.cross_entropy(torch.cat(all ranks' input, dim=1), target, weight,
    ignore_index, reduction, label_smoothing, z_loss=z_loss, softcap=softcap, dtype=dtype)`` in
    value (the same on every rank) and in the gradient of this rank's ``input``; with
    ``normalizer`` ('mean'), the summed loss divided by it instead of the 'mean' denominator.

    Args:
        input: this rank's logits (N, V_r), (N, V_r, d1..dk) or (V_r,) -- or a DTensor of the global
            logits sharded on the class dim by one mesh dim, the other mesh dims Shard(0) (distinct
            samples) or Replicate. The result is then a DTensor: the global loss (Replicate) for
            'sum'/'mean', with sum and denominator summed over the Shard(0) mesh dims (one extra
            all-reduce of 2 numbers per dim); for 'none', the per-sample losses Shard(0) there.
        target: global class indices (N[, d1..dk]) replicated over ``group`` (ignore_index allowed),
            or class probabilities sharded like ``input`` (torch's rule: floating, input's shape).
            A DTensor beside a DTensor input, placed accordingly; not differentiated.
        weight: the full class weight (C,) (replicated; a DTensor must be Replicate); not
            differentiated. Weighted 'mean' divides by sum of w[t_i] over counted targets, as torch.
        group: the vocab-parallel ProcessGroup (or a 1-D DeviceMesh); None: the default group.
        vocab_range: (start, stop) of this rank's classes. Default: torch.chunk's / DTensor's layout,
            ceil(C / W) classes per rank, empty trailing shards allowed (C = 5 over 4: 2, 2, 1, 0).
        num_classes: C; else the class weight's length; else the ranks' sizes summed (one extra
            all_gather of W integers per call -- pass num_classes to skip it).
        z_loss, softcap, normalizer, dtype: as crossent's (see crossent.cross_entropy and
            crossent.linear_cross_entropy); ``normalizer`` is the global count of a data-parallel
            step (`global_normalizer`).
        deterministic: sum the statistics in rank order (an all_gather of W x the payload instead
            of the all_reduce SUM): independent of the backend's reduction algorithm.

    Collectives (M = samples = N d1..dk; bytes in the compute dtype: 4 for 16/32-bit inputs, 8 for
    float64), forward only, over ``group``:
        1. all_reduce MAX of the local row max                       M x 4 bytes
        2. all_reduce SUM of [sum exp(z - max), z_target (owner only)(, sum_c w_c z_c)] or, for
           probability targets, [sum exp, sum w t', sum w t' z]        2M x 4 (3M x 4) bytes
        backward: none. z_loss, softcap, ignore_index and the denominators need no collective.
    (A ring all-reduce moves 2 (W-1)/W times the payload per rank.) Statistics are never
    differentiated through: the gradient is computed locally, exactly.

    Determinism: for a fixed world size, vocabulary layout and backend configuration the results
    are bitwise reproducible run to run (gloo; NCCL's algorithm choice may vary: use
    ``deterministic=True``); they are not bitwise equal to the single-process loss (sums are
    grouped by rank).
    """
