"""Checks of the distillation losses (linear_distillation_loss, linear_topk_distillation_loss):
the two heads' operands, the teacher's top-k, and the options."""

from __future__ import annotations

import math

import torch

from .._options import DistillationOptions
from . import targets
from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    TargetOutOfRange,
    _finite_number,
    _floating,
    _same_device,
    _tensor,
    _values_checked,
    flag,
    non_negative,
    positive,
    product_operands,
)
from .linear import linear_chunking
from .losses import loss_options

# How far above 1 a teacher's top-k mass may sum (and above 0 one log-prob may be) before the
# log-probs are refused as not log-probabilities: the rounding of log-probs stored in the dtype
# (bfloat16 keeps 8 bits: sum_j q_j |log q_j| 2^-8 is ~2% at an entropy of 5 nats).
LOG_PROB_SLACK = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def head(fn: str, prefix: str, input: object, weight: object, bias: object, *, against=None) -> None:
    """One model's head: input (N, D), weight (V, D), bias (V,) or None, one dtype and device
    (``against``: the student's input, whose device the teacher's tensors share)."""
    names = (f"{prefix}input", f"{prefix}linear_weight", f"{prefix}linear_bias")
    input = _tensor(fn, names[0], input)
    _floating(fn, names[0], input)
    if input.dim() != 2:
        raise InvalidArgument(
            f"{fn}: {names[0]} must have shape (N, in_features), got shape {tuple(input.shape)}; "
            f"flatten the leading dimensions: {names[0]}.reshape(-1, {input.shape[-1] if input.dim() else 'D'})"
        )
    weight = _tensor(fn, names[1], weight)
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise InvalidArgument(
            f"{fn}: {names[1]} must have shape (V, in_features) with in_features = "
            f"{names[0]}.shape[1] = {input.shape[1]}, got shape {tuple(weight.shape)}"
        )
    operands = [(names[1], weight)]
    if bias is not None:
        bias = _tensor(fn, names[2], bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise InvalidArgument(f"{fn}: {names[2]} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        operands.append((names[2], bias))
    if against is not None:
        _same_device(fn, names[0], input, against)
    product_operands(fn, operands, input, names[0], cast="one of them")


def teacher_head(fn: str, input, weight, teacher_input, teacher_weight, teacher_bias) -> None:
    """The teacher's head: its own hidden width, the student's tokens and vocabulary."""
    head(fn, "teacher_", teacher_input, teacher_weight, teacher_bias, against=input)
    if teacher_input.shape[0] != input.shape[0]:
        raise InvalidArgument(
            f"{fn}: teacher_input must have one row per row of input ({input.shape[0]}), "
            f"got shape {tuple(teacher_input.shape)}"
        )
    if teacher_weight.shape[0] != weight.shape[0]:
        raise InvalidArgument(
            f"{fn}: teacher_linear_weight must have the student's vocabulary (V = "
            f"linear_weight.shape[0] = {weight.shape[0]}), got {teacher_weight.shape[0]} rows; the "
            f"divergence compares the two distributions class by class (the hidden widths may differ)"
        )


def distill_target(fn: str, target: object, input: torch.Tensor, num_classes: int, ignore_index: int,
                   hard_weight: float):
    """None, or (N,) int64 class indices in [0, V) or ignore_index."""
    if target is None:
        if hard_weight != 0.0:
            raise InvalidArgument(
                f"{fn}: hard_weight={hard_weight} needs target (the labels of the student's "
                f"cross-entropy), got target=None"
            )
        return None
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    target = targets.class_index_dtype(fn, target, k_dim=True)
    if tuple(target.shape) != (input.shape[0],):
        raise InvalidArgument(f"{fn}: target must have shape ({input.shape[0]},), got {tuple(target.shape)}")
    targets.class_index_range(fn, target, num_classes, ignore_index)
    return target


def options(fn: str, *, topk: bool, beta=0.5, temperature=1.0, softcap=None, teacher_softcap=None,
            hard_weight=0.0, soft_weight=1.0, tail=True, ignore_index=-100, reduction="mean",
            normalizer=None, chunk_size=None, dtype=None, shape=(0, 0, 0)) -> DistillationOptions:
    """The scalar options, checked and packed (shape: (N, D, V) for the chunk-size check)."""
    base = loss_options(fn, ignore_index=ignore_index, reduction_=reduction, softcap=softcap, normalizer=normalizer)
    t_cap = None
    if teacher_softcap is not None:
        t_cap = positive(fn, "teacher_softcap", teacher_softcap, or_none=True)
    rows, _ = linear_chunking(fn, base.reduction, base.normalizer, chunk_size, None, *shape)
    beta = _finite_number(fn, "beta", beta)
    if not 0.0 <= beta <= 1.0:
        raise InvalidArgument(f"{fn}: beta must be in [0, 1] (0 forward KL, 1 reverse KL), got {beta}")
    temperature = positive(fn, "temperature", temperature)
    flag(fn, "tail", tail)
    return DistillationOptions(
        beta=beta, temperature=temperature, softcap=base.softcap, teacher_softcap=t_cap,
        hard_weight=non_negative(fn, "hard_weight", hard_weight),
        soft_weight=non_negative(fn, "soft_weight", soft_weight),
        tail=tail, topk=topk, ignore_index=base.ignore_index, reduction=base.reduction,
        normalizer=base.normalizer, chunk_size=rows, dtype=dtype,
    )


def topk_teacher(fn: str, input: torch.Tensor, num_classes: int, teacher_ids: object, teacher_log_probs: object,
                 opts: DistillationOptions) -> torch.Tensor:
    """teacher_ids (N, k) int64 with k <= V, ids in [0, V) or ignore_index, none repeated in a
    row; teacher_log_probs (N, k) floating log-probabilities. Returns the ids."""
    ids = _tensor(fn, "teacher_ids", teacher_ids)
    log_q = _tensor(fn, "teacher_log_probs", teacher_log_probs)
    for name, t in (("teacher_ids", ids), ("teacher_log_probs", log_q)):
        _same_device(fn, name, t, input)
        if t.dim() != 2 or t.shape[0] != input.shape[0] or t.shape[1] < 1:
            raise InvalidArgument(
                f"{fn}: {name} must have shape (N, k) = ({input.shape[0]}, k) with k >= 1, got {tuple(t.shape)}")
    if ids.shape != log_q.shape:
        raise InvalidArgument(
            f"{fn}: teacher_log_probs must have the shape of teacher_ids {tuple(ids.shape)}, got {tuple(log_q.shape)}")
    if ids.shape[1] > num_classes:
        raise InvalidArgument(
            f"{fn}: teacher_ids has k = {ids.shape[1]} ids per row, more than the V = {num_classes} classes")
    if ids.dtype != torch.int64:
        raise InvalidArgumentType(f"{fn}: teacher_ids must be int64, got {ids.dtype}; use teacher_ids.long()")
    _floating(fn, "teacher_log_probs", log_q)
    if _values_checked(ids):
        _ids_values(fn, ids, num_classes, opts.ignore_index)
        _log_prob_values(fn, ids != opts.ignore_index, log_q, opts.tail)
    return ids


def _ids_values(fn, ids, num_classes, ignore_index):
    valid = ids != ignore_index
    bad = valid & ((ids < 0) | (ids >= num_classes))
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise TargetOutOfRange(
            f"{fn}: teacher_ids contains {int(ids[where])} at index {where}, outside the classes "
            f"[0, {num_classes}) and not ignore_index={ignore_index}")
    k = ids.shape[1]
    placeholders = -1 - torch.arange(k, device=ids.device)  # (distinct, so ignored entries never match)
    ordered = torch.where(valid, ids, placeholders).sort(1).values
    repeated = ordered[:, 1:] == ordered[:, :-1]
    if bool(repeated.any()):
        row, col = (int(i) for i in repeated.nonzero()[0])
        raise InvalidArgument(
            f"{fn}: teacher_ids repeats id {int(ordered[row, col])} in row {row}; each row must "
            f"list distinct ids (pad with ignore_index={ignore_index})")


def _log_prob_values(fn, valid, log_q, tail: bool):
    slack = LOG_PROB_SLACK[log_q.dtype]
    masked = torch.where(valid, log_q.double(), float("-inf"))
    if bool(torch.isnan(masked).any()):
        where = tuple(int(i) for i in torch.isnan(masked).nonzero()[0])
        raise InvalidArgument(f"{fn}: teacher_log_probs is nan at index {where}")
    top = masked.amax(1)
    if bool((top > math.log1p(slack)).any()):
        row = int((top > math.log1p(slack)).nonzero()[0])
        raise InvalidArgument(
            f"{fn}: teacher_log_probs must be log-probabilities (<= 0), got {float(top[row]):.4g} in row "
            f"{row}; pass the teacher's log_softmax, not its logits")
    mass = torch.exp(masked).sum(1)
    if bool((mass > 1.0 + slack).any()):
        row = int((mass > 1.0 + slack).nonzero()[0])
        raise InvalidArgument(
            f"{fn}: teacher_log_probs must be log-probabilities of distinct tokens, whose "
            f"probabilities sum to at most 1 per row, got {float(mass[row]):.6g} in row {row}")
    if not tail:
        empty = valid.any(1) & (mass == 0)
        if bool(empty.any()):
            row = int(empty.nonzero()[0])
            raise InvalidArgument(
                f"{fn}: with tail=False the teacher's mass on the ids is renormalised, but row {row} "
                f"has none (every log-prob -inf); use tail=True or ignore the row")
