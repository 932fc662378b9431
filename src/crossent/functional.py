"""The public functional API: torch.nn.functional's signatures, crossent's kernels.

Each function resolves torch's deprecated ``size_average``/``reduce`` into ``reduction`` (with
torch's warning), checks its arguments (`_checks`), packs the options, and calls the backend
function that `_dispatch` returns. Nothing below this module sees the legacy arguments.

Small CPU calls first try torch's own kernel on the raw arguments (rule 2, `_to_torch`, before
the checks, for speed); if torch refuses the arguments (one of `torch_kernels.BAD_INPUT`), the
checks run and name the problem (they accept what torch accepts: a call they pass is dispatched
again). Errors that say nothing about the arguments (out of memory, a device error, a bug)
propagate.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from . import _autocast, _backends, _checks, _dispatch, _docs, _forced, _to_torch
from ._functional_log_probs import linear_log_probs, log_probs  # noqa: F401  (re-exported)
from .backends import torch_kernels as _torch

# torch's refusals of bad arguments, and the errors among them that say nothing about arguments.
_BAD_INPUT, _NOT_BAD_INPUT = _torch.BAD_INPUT, _torch.NOT_BAD_INPUT

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_log_probs",
    "log_probs",
    "linear_distillation_loss",
    "linear_topk_distillation_loss",
    "nll_loss",
]

_REFUSED = _to_torch.REFUSED  # torch's kernel refused the arguments
_ce_kernel, _REDUCTION_ENUM, _has_torch_function = _torch.CE_KERNEL, _torch.REDUCTION_ENUM, _torch.has_torch_function
_SERIAL, _INT64, _NOT_SMALL = _torch.SERIAL_REDUCTION, torch.int64, float("inf")


def _torch_first(kernel, *args):
    """torch's own kernel on the raw arguments (rule 2 said it is the faster one), or _REFUSED when
    torch refuses them as bad input: then crossent's checks run and say what is wrong."""
    try:
        return kernel(*args)
    except _BAD_INPUT as err:
        if isinstance(err, _NOT_BAD_INPUT):
            raise
        return _REFUSED


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """torch.nn._reduction.legacy_get_string, with torch's warning text."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    resolved = "mean" if (size_average and reduce) else "sum" if reduce else "none"
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{resolved}' instead.",
        stacklevel=3,
    )
    return resolved


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    loss = None
    if (size_average is reduce is dtype is softcap is None
            and not (z_loss or inplace_backward or _forced.active or _backends.ENV_BACKEND)):
        # The commonest call: rules 1-2 (`_to_torch`) and torch's kernel at once, inline. Nothing is
        # forced, the input is a tensor of at most TORCH_MAX_NUMEL elements, no __torch_function__
        # override or mode is active (it sees F.cross_entropy, as with torch), the reduction is
        # torch's and the smoothing in [0, 1]; above torch's serial grain only int64 class indices
        # (its probability-target path ends in a thread-dependent sum, which
        # `cross_entropy_unchecked` reorders). If torch refuses the arguments the checks name them,
        # without asking torch again. Inline, not a predicate's call: at 64 x 10 inside a training
        # step the forward cost 0.35 us above F.cross_entropy's with the call, 0.19 us without;
        # what remains is the size test (numel, ~55 ns) and the option tests torch has no need of.
        try:
            n = input.numel()
        except AttributeError:  # (not a tensor: the checks say so)
            n = _NOT_SMALL
        if n <= _to_torch.TORCH_MAX_NUMEL and (n <= _SERIAL or getattr(target, "dtype", None) is _INT64):
            r = _REDUCTION_ENUM.get(reduction)
            if r is not None and 0.0 <= label_smoothing <= 1.0 and not _has_torch_function(input, target, weight):
                try:
                    return _ce_kernel(input, target, weight, r, ignore_index, label_smoothing)
                except _BAD_INPUT as err:
                    if isinstance(err, _NOT_BAD_INPUT):
                        raise
                    loss = _REFUSED
    elif size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if loss is _REFUSED:  # torch's kernel refused the arguments: the checks say why
        small = True
    else:
        small = _to_torch.cross_entropy_to_torch(input, label_smoothing, z_loss, softcap, inplace_backward, dtype)
        if small:
            loss = _torch_first(_torch.cross_entropy_unchecked, input, target, weight, ignore_index,
                                reduction, label_smoothing, dtype)
            if loss is not _REFUSED:
                return loss
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input) and isinstance(target, torch.Tensor):
        target, weight, dtype = _autocast.cross_entropy_args(input, target, weight, dtype)
    with _autocast.maybe_off(input):  # (crossent's kernels run with autocast off)
        fn = "cross_entropy"
        input = _checks.logits_input(fn, input)
        num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
        dtype, weight, ignore_index, target, soft = _checks.logits_loss_arguments(
            fn, input, target, weight, num_classes, ignore_index, dtype)
        opts = _checks.loss_options(
            fn, ignore_index=ignore_index, reduction_=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
            softcap=softcap, inplace_backward=inplace_backward, soft=soft, dtype=dtype,
        )
        if inplace_backward:
            _checks.inplace_input(fn, input)
        return _dispatch.cross_entropy(input, target, weight, opts, small)


cross_entropy.__doc__ = _docs.CROSS_ENTROPY


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    small = _to_torch.nll_loss_to_torch(input)
    if small:
        loss = _torch_first(_torch.nll_loss_unchecked, input, target, weight, ignore_index, reduction)
        if loss is not _REFUSED:
            return loss
    reduction = _checks.deprecated_reduction(reduction)
    fn = "nll_loss"
    dtype = _autocast.loss_dtype(input)  # float32 under autocast for a 16-bit input, else None
    with _autocast.maybe_off(input):  # (crossent's kernels run with autocast off)
        input = _checks.logits_input(fn, input)
        opts = _checks.loss_options(fn, ignore_index=ignore_index, reduction_=reduction, dtype=dtype)
        num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
        weight = _checks.class_weight(fn, _autocast.fp32(weight) if dtype else weight, input, num_classes,
                                      dtype=dtype)
        target = _checks.logits_class_indices(fn, input, target, num_classes, opts.ignore_index)
        _checks.argument_gradients(fn, "class_index", weight=weight)
        return _dispatch.nll_loss(input, target, weight, opts, small)


nll_loss.__doc__ = _docs.NLL_LOSS


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    return _binary("binary_cross_entropy", input, target, weight, reduction, None)


binary_cross_entropy.__doc__ = _docs.BINARY_CROSS_ENTROPY


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    return _binary("binary_cross_entropy_with_logits", input, target, weight, reduction, pos_weight)


def _binary(fn, input, target, weight, reduction, pos_weight):
    """Both binary losses after their legacy arguments: the torch-first try, the checks, dispatch."""
    logits = fn == "binary_cross_entropy_with_logits"
    small = _to_torch.binary_to_torch(input)
    if small:
        if logits:
            loss = _torch_first(_torch.binary_cross_entropy_with_logits_unchecked, input, target,
                                weight, reduction, pos_weight)
        else:
            loss = _torch_first(_torch.binary_cross_entropy_unchecked, input, target, weight, reduction)
        if loss is not _REFUSED:
            return loss
    reduction = _checks.deprecated_reduction(reduction)
    dtype = _autocast.binary_loss_dtype(fn, input)  # float32 under autocast for 16-bit input
    with _autocast.maybe_off(input):  # (crossent's kernels run with autocast off)
        input, target = _checks.binary_pair(fn, input, target)
        opts = _checks.loss_options(fn, reduction_=reduction, dtype=dtype)
        weight = _checks.broadcast_weight(fn, "weight", weight, input)
        if logits:
            pos_weight = _checks.broadcast_weight(fn, "pos_weight", pos_weight, input)
            _checks.argument_gradients(fn, "binary_logits", weight=weight, target=target, pos_weight=pos_weight)
            return _dispatch.binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts, small)
        _checks.probabilities_in_unit_interval(fn, input)
        _checks.probabilities_in_unit_interval(fn, target, "target")
        _checks.argument_gradients(fn, "binary", weight=weight, target=target)
        return _dispatch.binary_cross_entropy(input, target, weight, opts, small)


binary_cross_entropy_with_logits.__doc__ = _docs.BINARY_CROSS_ENTROPY_WITH_LOGITS


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    extensions = (
        options is not None or z_loss or softcap is not None or normalizer is not None
        or chunk_size is not None or dtype is not None
    )
    loss = None
    if not extensions:  # the commonest call: rule 2 and torch's composition at once (CPU)
        loss = _to_torch.plain_linear_cross_entropy_on_torch(
            input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing)
        if loss is not None and loss is not _REFUSED:
            return loss
    if loss is None and _to_torch.linear_to_torch(
        input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing, extensions
    ):
        loss = _torch_first(_torch.linear_cross_entropy_unchecked, input, linear_weight, target,
                            linear_bias, weight, reduction, ignore_index, label_smoothing)
        if loss is not _REFUSED:
            return loss
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input):
        input, linear_weight, linear_bias, weight, dtype = _autocast.linear_args(
            input, linear_weight, linear_bias, weight, dtype
        )
    with _autocast.maybe_off(input):  # (crossent's kernels run with autocast off)
        fn = "linear_cross_entropy"
        _checks.linear_operands(fn, input, linear_weight, linear_bias)
        given_target = target  # (torch's chunked path is chosen by the target as given)
        target, soft, ignore_index = _checks.linear_targets(fn, input, linear_weight, target, ignore_index)
        dtype = _checks.loss_dtype(fn, dtype, input)
        weight = _checks.class_weight(fn, weight, input, linear_weight.shape[0], dtype=dtype)
        _checks.target_gradients(fn, target, soft, weight)
        opts = _checks.loss_options(
            fn, ignore_index=ignore_index, reduction_=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
            softcap=softcap, normalizer=normalizer, soft=soft, dtype=dtype,
        )
        unbatched = input.dim() == 1
        rows, retain = _checks.linear_chunking(
            fn, opts.reduction, opts.normalizer, chunk_size, options,
            1 if unbatched else input.shape[0], input.shape[-1], linear_weight.shape[0],
        )
        _checks.linear_options_for_call(fn, options, input, given_target, opts.reduction,
                                        label_smoothing, linear_weight.dim() > 2)
        if rows is not None or retain:
            opts = dataclasses.replace(opts, chunk_size=rows, allow_retain_graph=retain)
        if unbatched:  # (D,) -> (1, D); the loss of 'none' comes back as a scalar, as torch's
            input, target = input.unsqueeze(0), target.unsqueeze(0)
        loss = _dispatch.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts)
        return loss.squeeze(0) if unbatched and opts.reduction == "none" else loss


linear_cross_entropy.__doc__ = _docs.LINEAR_CROSS_ENTROPY


# The distillation losses live in _distillation.py (their own checks and dispatch).
from ._distillation import linear_distillation_loss, linear_topk_distillation_loss  # noqa: E402
