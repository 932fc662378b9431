"""The distillation losses' public functions (re-exported by `crossent` and `crossent.functional`):
arguments checked (`_checks.distillation`), options packed (`DistillationOptions`), one dispatch
call. The math is backends/divergence.py's, the contract `crossent.reference`'s."""

from __future__ import annotations

import torch

from . import _autocast, _dispatch, _docs
from ._checks import distillation as _checks


def _autocast_heads(*heads):
    """Under autocast each head's product runs in the autocast dtype (as F.linear would) and the
    loss is float32: (the cast heads..., dtype)."""
    out, dtype = [], None
    for x, w, b in heads:
        x, w, b, _, dtype = _autocast.linear_args(x, w, b, None, None)
        out.append((x, w, b))
    return out, dtype


def linear_distillation_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    *,
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
) -> torch.Tensor:
    fn = "linear_distillation_loss"
    dtype = None
    if _autocast.active(input):
        ((input, linear_weight, linear_bias), (teacher_input, teacher_linear_weight, teacher_linear_bias)), dtype = \
            _autocast_heads((input, linear_weight, linear_bias),
                            (teacher_input, teacher_linear_weight, teacher_linear_bias))
    with _autocast.maybe_off(input):  # (crossent's kernels run with autocast off)
        _checks.head(fn, "", input, linear_weight, linear_bias)
        _checks.teacher_head(fn, input, linear_weight, teacher_input, teacher_linear_weight, teacher_linear_bias)
        n, v = input.shape[0], linear_weight.shape[0]
        opts = _checks.options(
            fn, topk=False, beta=beta, temperature=temperature, softcap=softcap, teacher_softcap=teacher_softcap,
            hard_weight=hard_weight, soft_weight=soft_weight, ignore_index=ignore_index, reduction=reduction,
            normalizer=normalizer, chunk_size=chunk_size, dtype=dtype, shape=(n, input.shape[1], v))
        target = _checks.distill_target(fn, target, input, v, opts.ignore_index, opts.hard_weight)
        return _dispatch.linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight,
                                                  linear_bias, teacher_linear_bias, target, opts)


linear_distillation_loss.__doc__ = _docs.LINEAR_DISTILLATION_LOSS


def linear_topk_distillation_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    tail: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    fn = "linear_topk_distillation_loss"
    dtype = None
    if _autocast.active(input):
        ((input, linear_weight, linear_bias),), dtype = _autocast_heads((input, linear_weight, linear_bias))
        teacher_log_probs = _autocast.fp32(teacher_log_probs)
    with _autocast.maybe_off(input):
        _checks.head(fn, "", input, linear_weight, linear_bias)
        n, v = input.shape[0], linear_weight.shape[0]
        opts = _checks.options(
            fn, topk=True, temperature=temperature, softcap=softcap, tail=tail, ignore_index=ignore_index,
            reduction=reduction, normalizer=normalizer, chunk_size=chunk_size, dtype=dtype,
            shape=(n, input.shape[1], v))
        teacher_ids = _checks.topk_teacher(fn, input, v, teacher_ids, teacher_log_probs, opts)
        return _dispatch.linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs,
                                                       linear_bias, opts)


linear_topk_distillation_loss.__doc__ = _docs.LINEAR_TOPK_DISTILLATION_LOSS
