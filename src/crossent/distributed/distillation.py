"""vocab_parallel_linear_distillation_loss: `crossent.linear_distillation_loss` of a student and a
teacher whose output layers are split alike by vocabulary rows over a group: the arguments checked, the
layout resolved, one call of `_distill_shards` (the math, its derivation and the collectives are there).
"""

from __future__ import annotations

import torch

from .. import _autocast
from .._checks import distillation as _checks
from .._checks import distributed as _dchecks
from .._checks._common import InvalidArgument
from ..backends import composite_distill
from ..backends.chunked import distill_rows
from ..backends.common import compute_dtype, deterministic_sum
from . import _comm, _layout
from ._distill_shards import _FN, _Call, _DistillFn, _loop


def _shard_rows(fn, comm, linear_weight, teacher_linear_weight, num_classes):
    """Both heads hold the same vocabulary rows on each rank. Where the shard sizes are all-gathered
    anyway (no ``num_classes``), both heads' are, so that a mismatch on one rank is refused on every
    rank (rather than the others waiting in the first collective). Returns the ranks' sizes (None
    when not gathered)."""
    v, vt = linear_weight.shape[0], getattr(teacher_linear_weight, "shape", (None,))[0]
    world = _comm.size(comm.tp)
    sizes = None
    if num_classes is None and world > 1 and isinstance(vt, int):
        sizes = _layout.all_gather_int_rows([v, vt], comm.tp)
        bad = [r for r, (a, b) in enumerate(sizes) if a != b]
        if bad:
            r = bad[0]
            raise InvalidArgument(
                f"{fn}: teacher_linear_weight must hold the same vocabulary rows as linear_weight on each rank, "
                f"got {sizes[r][1]} rows beside linear_weight's {sizes[r][0]} on rank {r} of {world}; shard both "
                f"heads with the same boundaries (vocab_range applies to both)")
    elif isinstance(vt, int) and v != vt:
        raise InvalidArgument(
            f"{fn}: teacher_linear_weight must hold the same vocabulary rows as linear_weight on each rank "
            f"(this rank's linear_weight has {v} rows), got {vt} rows; shard both heads with the same "
            f"boundaries (vocab_range applies to both)")
    return sizes


def _vocab(fn, comm, local, sizes, vocab_range, num_classes):
    """This rank's Vocab (`_layout.resolve_vocab`), from the gathered sizes when there are some."""
    if sizes is not None:
        rank = torch.distributed.get_rank(comm.tp)
        num_classes = sum(a for a, _ in sizes)
        if vocab_range is None:
            start = sum(a for a, _ in sizes[:rank])
            vocab_range = (start, start + local)
    return _layout.resolve_vocab(fn, comm.tp, local, vocab_range, num_classes, None)


def _heads_in_autocast(input, linear_weight, linear_bias, teacher_input, teacher_linear_weight, teacher_linear_bias):
    from .._distillation import _autocast_heads

    ((input, linear_weight, linear_bias), (teacher_input, teacher_linear_weight, teacher_linear_bias)), dtype = \
        _autocast_heads((input, linear_weight, linear_bias), (teacher_input, teacher_linear_weight, teacher_linear_bias))
    return input, linear_weight, linear_bias, teacher_input, teacher_linear_weight, teacher_linear_bias, dtype


def _single(input, linear_weight, teacher_input, teacher_linear_weight, kw):
    """A group of one rank holds every class: the single-device loss itself."""
    from .._distillation import linear_distillation_loss

    return linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, **kw)


def vocab_parallel_linear_distillation_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    *,
    group=None,
    linear_bias: torch.Tensor | None = None,
    teacher_linear_bias: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    softcap: float | None = None,
    teacher_softcap: float | None = None,
    hard_weight: float = 0.0,
    soft_weight: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    vocab_range: tuple[int, int] | None = None,
    num_classes: int | None = None,
    deterministic: bool = False,
) -> torch.Tensor:
    fn = _FN
    kw = dict(linear_bias=linear_bias, teacher_linear_bias=teacher_linear_bias, target=target, beta=beta,
              temperature=temperature, softcap=softcap, teacher_softcap=teacher_softcap, hard_weight=hard_weight,
              soft_weight=soft_weight, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer,
              chunk_size=chunk_size)
    if any(_dchecks.is_dtensor(t) for t in (linear_weight, linear_bias, teacher_linear_weight, teacher_linear_bias)):
        from ._dtensor_head import unpack_pair

        dt = unpack_pair(fn, input, linear_weight, linear_bias, teacher_input, teacher_linear_weight,
                         teacher_linear_bias, target, group, vocab_range, num_classes, reduction)
        kw.update(linear_bias=dt.bias, teacher_linear_bias=dt.teacher_bias, target=dt.target)
        out = vocab_parallel_linear_distillation_loss(
            dt.input, dt.weight, dt.teacher_input, dt.teacher_weight, group=dt.group, vocab_range=dt.vocab_range,
            num_classes=dt.num_classes, deterministic=deterministic, **kw)
        return dt.wrap(out, tuple(out.shape))
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias),
                    ("teacher_linear_weight", teacher_linear_weight), ("teacher_linear_bias", teacher_linear_bias)):
        _dchecks.plain_parameter(fn, name, t)
    _dchecks.plain_input(fn, input)
    _dchecks.plain_input(fn, teacher_input)
    comm = _layout.Comm(_dchecks.group(fn, group), (), _dchecks.deterministic(fn, deterministic))
    dtype = None
    if _autocast.active(input):
        input, linear_weight, linear_bias, teacher_input, teacher_linear_weight, teacher_linear_bias, dtype = \
            _heads_in_autocast(input, linear_weight, linear_bias, teacher_input, teacher_linear_weight,
                               teacher_linear_bias)
    with _autocast.maybe_off(input):
        _checks.head(fn, "", input, linear_weight, linear_bias)
        sizes = _shard_rows(fn, comm, linear_weight, teacher_linear_weight, num_classes)
        _checks.teacher_head(fn, input, linear_weight, teacher_input, teacher_linear_weight, teacher_linear_bias)
        n, v_r = input.shape[0], linear_weight.shape[0]
        opts = _checks.options(
            fn, topk=False, beta=beta, temperature=temperature, softcap=softcap, teacher_softcap=teacher_softcap,
            hard_weight=hard_weight, soft_weight=soft_weight, ignore_index=ignore_index, reduction=reduction,
            normalizer=normalizer, chunk_size=chunk_size, dtype=dtype, shape=(n, input.shape[1], max(v_r, 1)))
        vocab = _vocab(fn, comm, v_r, sizes, vocab_range, num_classes)
        target = _checks.distill_target(fn, target, input, vocab.num_classes, opts.ignore_index, opts.hard_weight)
        if _comm.size(comm.tp) == 1:
            kw.update(linear_bias=linear_bias, teacher_linear_bias=teacher_linear_bias, target=target)
            return _single(input, linear_weight, teacher_input, teacher_linear_weight, kw)
        world = _comm.size(comm.tp)
        # the same chunking on every rank (the per-chunk collectives' shapes): from the largest default shard
        rows_ = opts.chunk_size or distill_rows(n, input.shape[1], teacher_input.shape[1],
                                                max(1, -(-vocab.num_classes // world)), input.dtype,
                                                teacher_input.dtype, opts)
        want = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
        call = _Call(vocab, opts, comm, max(1, rows_), composite_distill.out_dtype(input, opts), want)
        tensors = (input, linear_weight, linear_bias, teacher_input.detach(), teacher_linear_weight.detach(),
                   None if teacher_linear_bias is None else teacher_linear_bias.detach(), target)
        if torch.is_grad_enabled() and any(want):
            return _DistillFn.apply(call, *tensors)
        return _no_grad(call, tensors)


def _no_grad(call: _Call, tensors) -> torch.Tensor:
    """The loss alone (one pass, the forward's collectives)."""
    x, w, b, xt, wt, bt, target = tensors
    acc = compute_dtype(x.dtype)
    counted = composite_distill.counted_rows(x.shape[0], target, call.opts, x.device)
    losses, _, _ = _loop(call, (x, w, b, xt, wt, bt), call.targets(target, acc), counted)
    if call.opts.reduction == "none":
        return losses.to(call.out_dtype)
    total = deterministic_sum(losses)
    den = composite_distill.denominator(counted, call.opts, acc)
    return (total / den if den is not None else total).to(call.out_dtype)


vocab_parallel_linear_distillation_loss.__doc__ = """The dense distillation loss of a vocabulary-parallel
    student and teacher (both output layers split by rows over ``group``, with the same boundaries),
    without either model's logits.

    Equivalent to ``crossent.linear_distillation_loss(input, cat(all ranks' linear_weight),
    teacher_input, cat(all ranks' teacher_linear_weight), linear_bias=cat(...),
    teacher_linear_bias=cat(...), ...)`` in value (on every rank) and in the gradients w.r.t.
    ``input`` (the full gradient, after the all-reduce), ``linear_weight`` and ``linear_bias`` (this
    rank's rows); the teacher's tensors are never differentiated. The divergence is TRL's generalized
    JSD with its temperature placement, exactly as the single-process loss (see its docstring): both
    models' capped logits divided by ``temperature``; beta = 0 forward KL(teacher || student), 1 reverse
    KL, between them the beta-mixture; the hard part the student's cross-entropy at temperature 1.

    Args:
        input: (N, D) the student's hidden states, the same on every rank of ``group``.
        linear_weight: this rank's rows (V_r, D) of the student's output layer (V_r may be 0), or the
            whole layer as a DTensor Shard(0) on one mesh dim (then the teacher's too; see
            `vocab_parallel_linear_log_probs` for the DTensor layout).
        teacher_input: (N, D_t) the teacher's hidden states (D_t may differ from D), the same on
            every rank.
        teacher_linear_weight: this rank's rows (V_r, D_t) of the teacher's output layer: the same
            classes as ``linear_weight``'s.
        group: the vocab-parallel ProcessGroup or 1-D DeviceMesh (None: the default group).
        linear_bias, teacher_linear_bias: this rank's (V_r,) bias rows.
        target, beta, temperature, softcap, teacher_softcap, hard_weight, soft_weight, ignore_index,
        reduction, normalizer: as in `crossent.linear_distillation_loss` (target: global class
            indices, the same on every rank).
        chunk_size: tokens per chunk (the same on every rank; default: the single-device rule for
            ceil(C / W) classes).
        vocab_range: (start, stop) of this rank's classes for both heads; default: the ranks' shards
            in rank order (C from ``num_classes``, else one all_gather of the shard sizes).
        num_classes: the full vocabulary C (skips that all_gather; then the default layout is
            torch.chunk's ceil(C / W) per rank).
        deterministic: sum the statistics and grad_x in rank order (an all_gather each).

    Collectives per call over ``group`` (N tokens in chunks of n, 4 bytes per number, 8 for float64):
        forward   per chunk: all_reduce MAX k n x 4, all_reduce SUM (k + 1) n x 4 (k without a hard
                  part), all_reduce SUM n x 4 (2 n x 4 for 0 < beta < 1; none when soft_weight = 0);
                  k = 2 (1 when soft_weight = 0, 3 with a hard part at temperature != 1)
        backward  all_reduce SUM of grad_x, N D x 4 (none when input needs no gradient)
    FLOPs per rank: 6 N D V_r + 2 N D_t V_r ('mean'/'sum': the gradients are finished in forward);
    'none' 8 N D V_r + 4 N D_t V_r (backward recomputes both models' logits, no statistic collective).
    A group of one rank runs crossent.linear_distillation_loss itself. Second derivatives
    (create_graph=True) raise. Values and gradients are exact (no approximation for any beta): the
    mixture needs p_c and q_c per class, i.e. the two global log-sum-exps, which the statistic
    all-reduces give (derivation: the module docstring).
    """
