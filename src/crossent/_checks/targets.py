"""Targets, one checker per kind, for every loss that takes them (cross_entropy and nll_loss,
linear_cross_entropy, the vocab-parallel losses): class indices and class probabilities.

torch's rules: a floating target shaped like the logits holds class probabilities; otherwise the
target holds class indices of the per-sample shape, int64 (or uint8 where torch's nll_loss takes
it: inputs (C,) and (N, C)), each in [0, C) or equal to ignore_index.
"""

from __future__ import annotations

import torch

from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    TargetOutOfRange,
    _same_device,
    _shape,
    _tensor,
    _values_checked,
)


def class_index_dtype(fn: str, target: torch.Tensor, *, k_dim: bool) -> torch.Tensor:
    """torch's rule for the dtype of class indices, as int64: int64, or uint8 where torch's
    nll_loss takes it -- for (C,) and (N, C) inputs, not K-dimensional ones (nll_loss2d and the
    reshaped K-dim paths want Long: "expected scalar type Long but found Byte"). Other integer
    dtypes are refused as torch refuses them ("expected target dtype to be Long or Byte"), so
    that code written against crossent runs on torch."""
    if target.dtype == torch.int64:
        return target
    if target.dtype == torch.uint8 and not k_dim:
        return target.long()
    accepted = "int64" if k_dim else "int64 or uint8"
    where = " for a K-dimensional input, as torch's" if k_dim and target.dtype == torch.uint8 else ", as torch's"
    raise InvalidArgumentType(
        f"{fn}: target of class indices must be {accepted}{where}, got {target.dtype}; "
        f"use target.long()"
    )


def class_index_range(fn: str, target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Every int64 class index lies in [0, C) or equals ignore_index (a value check: on CPU
    always, on accelerators when enabled; see `_common._values_checked`)."""
    if target.numel() and _values_checked(target):
        lo, hi = torch.aminmax(target)
        if lo.item() < 0 or hi.item() >= num_classes:
            bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
            if bool(bad.any()):
                where = tuple(int(i) for i in bad.nonzero()[0])
                value = int(target[where]) if where else int(target)
                raise TargetOutOfRange(
                    f"{fn}: target contains {value} at index {where}, outside the classes "
                    f"[0, {num_classes}) and not ignore_index={ignore_index}"
                )


def class_indices(fn: str, target: torch.Tensor, *, expected: tuple, num_classes: int,
                  ignore_index: int, k_dim: bool, probabilities: str, context: str) -> torch.Tensor:
    """Class indices of shape ``expected``, as int64 (dtype, shape and values checked).
    ``probabilities`` names the shape probability targets would need; ``context`` the shapes
    ``expected`` comes from (both for the messages)."""
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InvalidArgumentType(
            f"{fn}: target of class indices must be an integer tensor (int64) of shape "
            f"{_shape_of(expected)}, got {target.dtype} of shape {_shape(target)}; class "
            f"probabilities need a floating target of {probabilities}"
        )
    if tuple(target.shape) != tuple(expected):
        raise InvalidArgument(
            f"{fn}: target of class indices must have shape {tuple(expected)} {context}, got "
            f"{tuple(target.shape)}"
        )
    target = class_index_dtype(fn, target, k_dim=k_dim)
    class_index_range(fn, target, num_classes, ignore_index)
    return target


def _shape_of(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def logits_targets(fn: str, input: torch.Tensor, target: object, num_classes: int,
                   ignore_index: int) -> tuple[torch.Tensor, bool]:
    """cross_entropy's (and the vocab-parallel logits loss's) targets for logits input (C,) or
    (N, C, d1..dk) of ``num_classes`` classes in all: (int64 indices or the probabilities, soft)."""
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    if target.is_floating_point() and target.shape == input.shape:
        if ignore_index >= 0:
            raise InvalidArgument(
                f"{fn}: ignore_index={ignore_index} cannot apply to class-probability targets "
                f"(torch refuses it too); leave ignore_index at its default -100"
            )
        return target, True
    return logits_class_indices(fn, input, target, num_classes, ignore_index), False


def logits_class_indices(fn: str, input: torch.Tensor, target: object, num_classes: int,
                         ignore_index: int) -> torch.Tensor:
    """Class indices for logits (C,) / (N, C, d1..dk) (nll_loss's targets): int64."""
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    expected = tuple(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else ()
    return class_indices(
        fn, target, expected=expected, num_classes=num_classes, ignore_index=ignore_index,
        k_dim=input.dim() > 2, probabilities=f"the input's shape {_shape(input)}",
        context=f"for input of shape {tuple(input.shape)}",
    )


def linear_targets(fn: str, target: object, *, batch: tuple, classes: int, out: tuple,
                   num_classes: int, ignore_index: int, ignore_given: bool, device, context: str,
                   probabilities_floating: bool = True) -> tuple[torch.Tensor, bool]:
    """The targets of a linear loss with logits (*batch, classes, *out) (classes: this rank's
    under vocabulary parallelism; num_classes: all of them): class probabilities exactly when
    the target has the logits' shape (torch's rule), else class indices (*batch, *out). With
    ``probabilities_floating`` a non-floating target of the logits' shape is refused as such
    (torch's linear_cross_entropy); without it, it is read as class indices of the wrong shape.
    ``ignore_given``: the caller set an ignore_index that probabilities cannot take (torch
    refuses it)."""
    target = _tensor(fn, "target", target)
    if target.device != device:
        raise InvalidArgument(f"{fn}: target is on {target.device} but input is on {device}; move both to one device")
    logits = tuple(batch) + (classes,) + tuple(out)
    if tuple(target.shape) == logits and (target.is_floating_point() or probabilities_floating):
        if not target.is_floating_point():
            raise InvalidArgumentType(
                f"{fn}: a target of the logits' shape {logits} holds class probabilities and "
                f"must be floating-point, got {target.dtype}; class indices have shape "
                f"{tuple(batch) + tuple(out)}"
            )
        if ignore_given:
            raise InvalidArgument(
                f"{fn}: ignore_index={ignore_index} cannot be specified when target contains "
                f"class probabilities (torch refuses it too); leave ignore_index at its default"
            )
        return target, True
    index = class_indices(
        fn, target, expected=tuple(batch) + tuple(out), num_classes=num_classes,
        ignore_index=ignore_index, k_dim=bool(out),
        probabilities=f"the logits' shape {logits}", context=context,
    )
    return index, False
