"""vocab_parallel_linear_cross_entropy: the loss of a vocabulary-parallel output layer (each rank
holds the rows [start, stop) of the (C, D) weight) without its (N, C) -- or even (N, V_r) -- logits.

Contract (x (N, D), W_r (V_r[, d1..dk], D) and b_r this rank's rows of the full W and b)::

    loss == crossent.linear_cross_entropy(x, cat_r(W_r), t, linear_bias=cat_r(b_r), ...)

in value (on every rank) and in the gradients w.r.t. x (the full one, after the all-reduce), W_r
and b_r (this rank's rows of the full ones), for every option of `vocab_parallel_cross_entropy`.

Algorithm (n tokens per chunk; the statistics' math is `_stats`)::

    forward   per chunk: Z = x_c W_r^T (+ b_r) [n, V_r] -> local row max, partials   2 N D V_r FLOPs
              then all_reduce MAX [N], all_reduce SUM [k, N]; losses; nothing N x V_r is kept
    backward  per chunk: Z again; G = dl/dZ [n, V_r] (local, from lse and the per-row factors)
              grad_x[c] = G W_r  [n, D];  grad_W += G^T x_c  [V_r, D];  grad_b += sum G   6 N D V_r
              then all_reduce SUM of grad_x [N, D] over the group (see below)

The logits are computed twice (8 N D V_r FLOPs in all, vs 6 for the single-device fused loss that
finishes the gradients in forward): finishing them in forward would need the global statistics
before each chunk's gradient, i.e. two collectives per chunk instead of two in all; on a fast
interconnect with large chunks that trade can win, but the collectives' latency is paid per chunk.

Input gradient. Each rank's grad_x = G W_r is a partial sum over its classes, so the full
gradient is their sum: ``reduce_input_grad=True`` all-reduces it (fp32 for 16-bit inputs:
N D 4 bytes). ``False`` returns the partial sum, for frameworks that reduce it themselves (the
backward of Megatron's ColumnParallelLinear / a DTensor Replicate -> Partial input).
``sequence_parallel=True``: input is this rank's (N/W, D) tokens; forward all-gathers them
(rank order, equal counts per rank), the target covers the gathered N tokens, and backward
reduce-scatters grad_x (N/W D per rank) instead of all-reducing it.

A DTensor head (the weight Shard(0) on one mesh dim; `_dtensor_head`, shared with
vocab_parallel_linear_log_probs) runs this on its local tensors; a DTensor input sharded on the
tokens by other mesh dims adds them to the reduction of a scalar loss (its sum and 'mean'
denominator: one all_reduce SUM of 2 numbers per such dim, `_stats.reduce`).

Memory beyond inputs and gradients: one chunk's logits in the input dtype plus float32 temporaries
(n V_r each; n from the single-device fused loss's rule, `backends.chunked.chunk_rows`, or
``chunk_size``), per-token statistics (a few N floats), and the saved input (N D; under sequence
parallelism the gathered one). grad_W and grad_b accumulate in float32 for 16-bit weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import _checks
from .._checks import distributed as _dchecks
from .._options import LossOptions
from ..backends.autograd import Handover
from ..backends.chunked import chunk_rows
from ..backends.common import compute_dtype, output_dtype
from . import _comm, _layout, _stats

_FN = "vocab_parallel_linear_cross_entropy"


class _Head:
    """The weight shard as P = d1..dk heads of V_r classes: sample (token i, head j) is row i P + j
    of the (N P, V_r) logits, as in the single-device K-dim loss."""

    def __init__(self, linear_weight, linear_bias, index, probs):
        v, d = linear_weight.shape[0], linear_weight.shape[-1]
        self.v, self.p = v, math.prod(linear_weight.shape[1:-1])
        self.w2 = linear_weight.reshape(v * self.p, d)  # (V_r P, D)
        self.b2 = linear_bias.reshape(v * self.p) if linear_bias is not None else None
        self.index = index.reshape(-1) if index is not None else None  # (N P,)
        if probs is not None:  # (N, V_r, *out) -> (N P, V_r)
            probs = probs.reshape(probs.shape[0], v, self.p).transpose(1, 2).reshape(probs.shape[0] * self.p, v)
        self.probs = probs

    def logits(self, xc):
        """(n, D) -> (n P, V_r) in the input dtype."""
        z = torch.mm(xc, self.w2.t()) if self.b2 is None else torch.addmm(self.b2, xc, self.w2.t())
        if self.p == 1:
            return z
        return z.view(xc.shape[0], self.v, self.p).transpose(1, 2).reshape(xc.shape[0] * self.p, self.v)

    def unrows(self, g):
        """(n P, V_r) -> (n, V_r P), the layout of the logits' product."""
        if self.p == 1:
            return g
        n = g.shape[0] // self.p
        return g.view(n, self.p, self.v).transpose(1, 2).reshape(n, self.v * self.p)


def _forward(x, head, weight, vocab, opts, comm, rows):
    acc = compute_dtype(x.dtype)
    n, p = x.shape[0], head.p
    tg = _stats.prepare(head.index, head.probs, weight, vocab, opts, acc)
    m = torch.empty(n * p, dtype=acc, device=x.device)
    parts = torch.empty(_stats.num_partials(opts), n * p, dtype=acc, device=x.device)
    for i in range(0, n, rows):
        j = min(i + rows, n)
        z, _ = _stats.cap(head.logits(x[i:j]), opts, acc)
        m[i * p:j * p], parts[:, i * p:j * p] = _stats.chunk_partials(z, tg.rows(slice(i * p, j * p)), opts)
    m_all, log_s, parts = _stats.combine(m, parts, tg, opts, comm)
    loss, a, _ = _stats.losses(m_all, log_s, parts, tg, opts)
    stats = torch.stack([m_all, log_s])  # (2, M): the global softmax of each row, for backward
    if opts.reduction == "none":
        return loss, stats, a, None
    value, factor = _stats.reduce(loss, tg, weight, opts, n * p, comm, acc)
    return value, stats, a, factor


def _backward(x, head, weight, vocab, opts, rows, stats, a, g, want):
    """(grad_x partial (N, D) compute dtype, grad_W (V_r P, D) compute dtype, grad_b) of this rank."""
    acc = compute_dtype(x.dtype)
    n, d, p = x.shape[0], x.shape[1], head.p
    tg = _stats.prepare(head.index, head.probs, weight, vocab, opts, acc)
    want_x, want_w, want_b = want
    gx = torch.empty(n, d, dtype=x.dtype, device=x.device) if want_x else None
    gw = torch.zeros(head.w2.shape, dtype=acc, device=x.device) if want_w else None
    gb = torch.zeros(head.w2.shape[0], dtype=acc, device=x.device) if want_b else None
    per_sample = g.dim() > 0
    for i in range(0, n, rows):
        j = min(i + rows, n)
        xc = x[i:j]
        z, th = _stats.cap(head.logits(xc), opts, acc)
        s, e = i * p, j * p
        grad = head.unrows(_stats.chunk_grad(z, th, stats[0, s:e], stats[1, s:e], a[s:e], g[s:e] if per_sample else g,
                                             tg.rows(slice(s, e)), opts))  # (n, V_r P), acc
        if gb is not None:
            gb += grad.sum(0)
        grad = grad.to(x.dtype)  # the products run in the input dtype, as F.linear's
        if gx is not None:
            torch.mm(grad, head.w2, out=gx[i:j])
        if gw is not None:
            if gw.dtype == grad.dtype:
                gw.addmm_(grad.t(), xc)  # in place: no (V_r P, D) temporary per chunk
            else:  # 16-bit products, float32 accumulation (no mixed-dtype addmm everywhere)
                gw += torch.mm(grad.t(), xc)
    return gx, gw, gb


class _VocabParallelLinearFn(torch.autograd.Function):
    """Forward: (the all-gather of sequence parallelism), the two statistic all-reduces, the loss;
    backward: the local gradients, then one reduction of grad_x. create_graph=True raises."""

    @staticmethod
    def forward(call, input, linear_weight, linear_bias, index, probs, weight):
        x = _comm.gather_rows(input, call.comm.tp) if call.sp else input
        head = _Head(linear_weight, linear_bias, index, probs)
        value, stats, a, factor = _forward(x, head, weight, call.vocab, call.opts, call.comm, call.rows)
        call.handover.put((x, stats, a, factor))
        return _stats.fresh(value.reshape(call.out_shape).to(call.out_dtype))

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, linear_weight, linear_bias, index, probs, weight = inputs
        x, stats, a, factor = call.handover.take()
        ctx.save_for_backward(x, linear_weight, linear_bias, index, probs, weight, stats, a, factor)
        ctx.call, ctx.in_dtype = call, input.dtype

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True
            _dchecks.no_second_derivative(_FN)
        x, linear_weight, linear_bias, index, probs, weight, stats, a, factor = ctx.saved_tensors
        call = ctx.call
        acc = compute_dtype(x.dtype)
        g = grad_out.to(acc).reshape(-1) if factor is None else grad_out.to(acc).reshape(()) * factor
        want = (ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                linear_bias is not None and ctx.needs_input_grad[3])
        head = _Head(linear_weight, linear_bias, index, probs)
        gx, gw, gb = _backward(x, head, weight, call.vocab, call.opts, call.rows, stats, a, g, want)
        if gx is not None and (call.sp or call.reduce_grad):
            part = gx.to(acc)  # partial sums over the classes: added in float32 (float64)
            comm = call.comm
            if call.sp:
                gx = _comm.reduce_scatter_rows(part, comm.tp, comm.deterministic).to(ctx.in_dtype)
            else:
                gx = _comm.all_reduce_sum(part, comm.tp, comm.deterministic).to(ctx.in_dtype)
        gw = gw.reshape(linear_weight.shape).to(linear_weight.dtype) if gw is not None else None
        gb = gb.reshape(linear_bias.shape).to(linear_bias.dtype) if gb is not None else None
        return None, gx, gw, gb, None, None, None


@dataclass(frozen=True)
class _Call:
    """One call of the vocab-parallel linear loss: everything but its tensors. rows: tokens per
    chunk; sp: sequence parallelism; reduce_grad: all-reduce (or reduce-scatter) grad_x."""

    vocab: _layout.Vocab
    opts: LossOptions
    comm: _layout.Comm
    rows: int
    sp: bool
    reduce_grad: bool
    out_shape: tuple
    out_dtype: torch.dtype
    handover: Handover = field(default_factory=Handover, compare=False)


def vocab_parallel_linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    group,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    vocab_range: tuple[int, int] | None = None,
    num_classes: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    sequence_parallel: bool = False,
    reduce_input_grad: bool = True,
    deterministic: bool = False,
) -> torch.Tensor:
    fn = _FN
    options = dict(weight=weight, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                   z_loss=z_loss, softcap=softcap, normalizer=normalizer, chunk_size=chunk_size, dtype=dtype,
                   sequence_parallel=sequence_parallel, reduce_input_grad=reduce_input_grad)
    deterministic = _dchecks.deterministic(fn, deterministic)
    if _dchecks.is_dtensor(linear_weight) or _dchecks.is_dtensor(linear_bias):  # a DTensor head
        return _dtensor_head_loss(input, linear_weight, target, linear_bias, group, vocab_range, num_classes,
                                  deterministic, options)
    _dchecks.plain_parameter(fn, "linear_weight", linear_weight)
    _dchecks.plain_parameter(fn, "linear_bias", linear_bias)
    _dchecks.plain_input(fn, input)
    comm = _layout.Comm(_dchecks.group(fn, group), (), deterministic)
    return _loss(input, linear_weight, target, linear_bias, comm, vocab_range, num_classes, **options)


def _dtensor_head_loss(input, linear_weight, target, linear_bias, group, vocab_range, num_classes, deterministic,
                       options):
    """The loss of a DTensor head (`_dtensor_head`): the call on its local tensors, with the
    statistics over the weight's shard group and a scalar loss's sum and 'mean' count over the mesh
    dims where a DTensor input holds distinct tokens; a DTensor input gives a DTensor loss (the
    global scalar, Replicate; 'none': placed as the input's tokens)."""
    from ._dtensor_head import unpack

    fn = _FN
    _dchecks.dtensor_input_not_sequence_parallel(fn, input, options["sequence_parallel"])
    dt = unpack(fn, input, linear_weight, linear_bias, target, group, vocab_range, num_classes,
                input_grad_partial=not options["reduce_input_grad"])
    comm = _layout.Comm(dt.group, dt.data_groups(), deterministic)
    loss = _loss(dt.input, dt.weight, dt.target, dt.bias, comm, dt.vocab_range, dt.num_classes, **options)
    if loss.dim() == 0:
        return dt.wrap_scalar(loss)
    return dt.wrap(loss, tuple(input.shape[:-1]) + tuple(linear_weight.shape[1:-1]))


def _loss(input, linear_weight, target, linear_bias, comm, vocab_range, num_classes, *, weight, reduction,
          ignore_index, label_smoothing, z_loss, softcap, normalizer, chunk_size, dtype, sequence_parallel,
          reduce_input_grad):
    """The loss on plain local tensors (this rank's rows) over ``comm``."""
    fn = _FN
    weight = _dchecks.replicated(fn, "weight", weight)
    reduction = _checks.deprecated_reduction(reduction)
    _dchecks.sequence_parallel(fn, sequence_parallel, reduce_input_grad)
    _checks.linear_operands(fn, input, linear_weight, linear_bias)
    unbatched = input.dim() == 1
    if unbatched and sequence_parallel:
        _dchecks.sequence_parallel_batched(fn, input)
    x = input.unsqueeze(0) if unbatched else input
    rows_total = x.shape[0] * (_comm.size(comm.tp) if sequence_parallel else 1)
    out = tuple(linear_weight.shape[1:-1])
    local_classes = linear_weight.shape[0]
    vocab = _layout.resolve_vocab(fn, comm.tp, local_classes, vocab_range, num_classes, weight)
    target, soft = _dchecks.linear_targets(
        fn, rows_total, local_classes, out, vocab.num_classes,
        target.unsqueeze(0) if unbatched and isinstance(target, torch.Tensor) else target,
        ignore_index, input.device,
    )
    dtype = _checks.loss_dtype(fn, dtype, input)
    weight = _checks.class_weight(fn, weight, input, vocab.num_classes, dtype=dtype)
    _checks.target_gradients(fn, target, soft, weight)  # torch's refusals first
    _dchecks.no_grad_through(fn, "target", target)
    _dchecks.no_grad_through(fn, "weight", weight)
    opts = _checks.loss_options(
        fn, ignore_index=-100 if soft else ignore_index, reduction_=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, normalizer=normalizer,
        soft=soft, dtype=dtype,
    )
    chunk_size = _checks.count(fn, "chunk_size", chunk_size, what=" (tokens per chunk)")
    rows = chunk_size or chunk_rows(rows_total, x.shape[1], local_classes * math.prod(out), x.dtype, opts,
                                    soft=soft, class_weight=weight is not None)
    if _comm.size(comm.tp) == 1 and not comm.dp:  # one rank holds every class: the single-device loss
        return _single(input, linear_weight, target, linear_bias, weight, opts, chunk_size)
    index, probs = (None, target) if soft else (target, None)
    out_dtype = output_dtype(input, target, opts)
    out_shape = (rows_total, *out) if opts.reduction == "none" else ()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    if needs_grad:
        call = _Call(vocab, opts, comm, rows, sequence_parallel, reduce_input_grad, out_shape, out_dtype)
        loss = _VocabParallelLinearFn.apply(call, x, linear_weight, linear_bias, index, probs, weight)
    else:
        xs = _comm.gather_rows(x, comm.tp) if sequence_parallel else x
        head = _Head(linear_weight, linear_bias, index, probs)
        loss = _forward(xs, head, weight, vocab, opts, comm, rows)[0].reshape(out_shape).to(out_dtype)
    return loss.squeeze(0) if unbatched and opts.reduction == "none" else loss


def _single(input, linear_weight, target, linear_bias, weight, opts, chunk_size):
    """crossent.linear_cross_entropy (6 N D V FLOPs, gradients finished in forward, the same bits
    as a single-process run) for a group of one rank."""
    from ..functional import linear_cross_entropy

    if input.dim() == 1:
        target = target.squeeze(0)
    return linear_cross_entropy(
        input, linear_weight, target, linear_bias=linear_bias, weight=weight,
        reduction=opts.reduction, ignore_index=None if opts.soft else opts.ignore_index,
        label_smoothing=opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap,
        normalizer=opts.normalizer, chunk_size=chunk_size, dtype=opts.dtype,
    )


vocab_parallel_linear_cross_entropy.__doc__ = """The fused linear cross-entropy of a vocabulary-parallel output layer.

    Equivalent to ``crossent.linear_cross_entropy(input, cat(all ranks' linear_weight), target,
    linear_bias=cat(all ranks' linear_bias), weight=weight, ...)`` in value (on every rank) and in
    the gradients of ``input`` (the full gradient, after the all-reduce), ``linear_weight`` and
    ``linear_bias`` (this rank's rows); no logits beyond one chunk of tokens (n x V_r).

    Args:
        input: (N, D) tokens (or (D,)), the same on every rank of ``group``; with
            ``sequence_parallel=True`` this rank's (N/W, D) slice of them (equal counts).
        linear_weight: this rank's rows (V_r, D) of the output layer, or (V_r, d1..dk, D) for
            K-dim heads; or the whole layer as a DTensor sharded on its rows (Shard(0), as
            ColwiseParallel places lm_head.weight) by one mesh dim, Replicate on the others, as
            in `vocab_parallel_linear_log_probs`: the group and the layout are then the
            DTensor's (pass group=None), its ``.grad`` a DTensor placed alike (Partial on a mesh
            dim where a DTensor input holds distinct tokens), and a DTensor input (Replicate on
            that mesh dim, Shard(0) or Replicate on the others) gives a DTensor loss: the global
            'mean' / 'sum' over every token (Replicate), 'none' placed as the tokens; with
            reduce_input_grad=False its gradient is Partial on that mesh dim. (A ZeRO-3
            placeholder raises: use `VocabParallelLinearCrossEntropyLoss`, which owns its weight.)
        target: global class indices (N[, d1..dk]) replicated over ``group``, or this rank's
            class probabilities (N, V_r[, d1..dk]); not differentiated.
        linear_bias: this rank's (V_r[, d1..dk]) bias rows.
        group: the vocab-parallel ProcessGroup (keyword, required; None: the default group).
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap, normalizer, dtype,
        vocab_range, num_classes, deterministic: as in `vocab_parallel_cross_entropy`.
        chunk_size: tokens per chunk (default: the single-device fused loss's memory rule).
        sequence_parallel: gather the input in forward, reduce-scatter its gradient in backward.
        reduce_input_grad: all-reduce the input gradient here (default), or return this rank's
            partial sum for a framework that reduces it (Megatron ColumnParallelLinear, DTensor).

    Collectives per step over ``group`` (M = N d1..dk samples; 4 bytes per number, 8 for float64):
        forward   [all_gather of the input, N D x input bytes per rank, if sequence_parallel]
                  all_reduce MAX   M x 4 bytes
                  all_reduce SUM   2M x 4 (3M x 4 with label smoothing or probability targets)
        backward  all_reduce SUM of grad_x, N D x 4 bytes (reduce_scatter under sequence
                  parallelism: N D / W x 4 per rank; none with reduce_input_grad=False)
    FLOPs: 2 N D V_r forward + 6 N D V_r backward per rank. A group of one rank runs
    crossent.linear_cross_entropy itself (6 N D V, no collective).

    Determinism: as `vocab_parallel_cross_entropy`, for a fixed chunk size too (chunking orders
    the sums of grad_W); ``deterministic=True`` also gathers grad_x (W x N D) to sum it in rank
    order.
    """
