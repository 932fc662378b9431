"""Checks of cross_entropy, nll_loss and the binary losses, and of the options they share."""

from __future__ import annotations

import warnings

import torch

from .._options import LossOptions
from . import targets
from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    _floating,
    _same_device,
    _shape,
    _tensor,
    _values_checked,
    flag,
    non_negative,
    positive,
    torch_int,
)
from ._common import label_smoothing as _label_smoothing
from .gradients import argument_gradients

_REDUCTIONS = ("none", "mean", "sum")

def reduction(fn: str, value: object) -> str:
    if value not in _REDUCTIONS:
        raise InvalidArgument(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {value!r}")
    return value  # type: ignore[return-value]


def loss_options(
    fn: str,
    *,
    ignore_index: int = -100,
    reduction_: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | None = None,
    inplace_backward: bool = False,
    soft: bool = False,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    allow_retain_graph: bool = False,
) -> LossOptions:
    """Check the scalar options of the cross-entropy family and pack them (soft, dtype,
    chunk_size and allow_retain_graph come checked by `is_prob_target`/`linear_targets`,
    `loss_dtype` and `linear_chunking`)."""
    ignore_index = torch_int(fn, "ignore_index", ignore_index)
    reduction(fn, reduction_)
    label_smoothing = _label_smoothing(fn, label_smoothing)
    z_loss = non_negative(fn, "z_loss", z_loss)
    if softcap is not None:
        softcap = positive(fn, "softcap", softcap, or_none=True)
    if normalizer is not None:
        if isinstance(normalizer, torch.Tensor):
            if normalizer.numel() != 1:
                raise InvalidArgument(
                    f"{fn}: normalizer must be a number or a one-element tensor, "
                    f"got a tensor of shape {_shape(normalizer)}"
                )
            if _values_checked(normalizer):
                normalizer = normalizer.item()
            # else: kept as a one-element tensor (reading it would sync a device or break a trace)
        if not isinstance(normalizer, torch.Tensor):
            normalizer = positive(fn, "normalizer", normalizer, or_none=True)
    flag(fn, "inplace_backward", inplace_backward)
    return LossOptions(
        ignore_index=ignore_index,
        reduction=reduction_,  # type: ignore[arg-type]
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        normalizer=normalizer,
        inplace_backward=inplace_backward,
        soft=soft,
        dtype=dtype,
        chunk_size=chunk_size,
        allow_retain_graph=allow_retain_graph,
    )


def logits_input(fn: str, input: object) -> torch.Tensor:
    input = _tensor(fn, "input", input)
    _floating(fn, "input", input)
    if input.dim() == 0:
        raise InvalidArgument(f"{fn}: input must have a class dimension (shape (C,) or (N, C, ...)), got a scalar")
    return input


def logits_loss_arguments(fn: str, input: torch.Tensor, target: object, weight: object, num_classes: int,
                          ignore_index: object, dtype: object):
    """What cross_entropy takes beside its (checked) logits, in this order: ``dtype=``, the class
    weight (C,), ignore_index, the target (class indices or probabilities: torch's rule) and
    torch's refusals of a gradient through them (`target_gradients`). Returns (dtype, weight,
    ignore_index, target, soft)."""
    dtype = loss_dtype(fn, dtype, input)
    weight = class_weight(fn, weight, input, num_classes, dtype=dtype)
    ignore_index = torch_int(fn, "ignore_index", ignore_index)
    target, soft = targets.logits_targets(fn, input, target, num_classes, ignore_index)
    target_gradients(fn, target, soft, weight)
    return dtype, weight, ignore_index, target, soft


def target_gradients(fn: str, target: torch.Tensor, soft: bool, weight: torch.Tensor | None) -> None:
    """torch refuses a gradient through class indices' weight; probabilities and their class
    weight are differentiable (`argument_gradients`)."""
    argument_gradients(fn, "probabilities" if soft else "class_index", weight=weight,
                       target=target if soft else None)


def class_weight(
    fn: str, weight: object, input: torch.Tensor, num_classes: int, name: str = "weight",
    dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """Class weights (C,), of the input's dtype -- or float32 with ``dtype=torch.float32`` (the
    loss of ``input.float()``, and what autocast gives)."""
    if weight is None:
        return None
    weight = _tensor(fn, name, weight)
    _floating(fn, name, weight)
    _same_device(fn, name, weight, input)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise InvalidArgument(
            f"{fn}: {name} must be a 1-D tensor with one entry per class ({num_classes}), "
            f"got shape {tuple(weight.shape)}"
        )
    expected = dtype or input.dtype
    if weight.dtype != expected:  # torch: "expected scalar type ... but found ..."
        against = "input has dtype" if dtype is None else "the loss is computed in"
        raise InvalidArgumentType(
            f"{fn}: {name} has dtype {weight.dtype} but {against} {expected}; torch "
            f"requires one dtype: pass {name}.to({expected})"
        )
    return weight


def inplace_input(fn: str, input: torch.Tensor) -> None:
    """The gradient can only be written into storage where every element has its own address."""
    if any(st == 0 and sz > 1 for st, sz in zip(input.stride(), input.shape)):
        raise InvalidArgument(
            f"{fn}: inplace_backward=True needs an input whose elements do not share memory "
            f"(got an expanded tensor with strides {input.stride()}); pass input.contiguous()"
        )


def binary_pair(fn: str, input: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    input = _tensor(fn, "input", input)
    target = _tensor(fn, "target", target)
    _floating(fn, "input", input)
    _same_device(fn, "target", target, input)
    if target.shape != input.shape:
        raise InvalidArgument(
            f"{fn}: target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if not target.is_floating_point():
        raise InvalidArgumentType(
            f"{fn}: target must be a floating-point tensor of 0/1 labels or probabilities, "
            f"got {target.dtype}; use target.float()"
        )
    if fn == "binary_cross_entropy" and target.dtype != input.dtype:  # torch: "Found dtype ..."
        raise InvalidArgumentType(
            f"{fn}: target has dtype {target.dtype} but input has dtype {input.dtype}; torch "
            f"requires one dtype: pass target.to({input.dtype})"
        )
    return input, target


def broadcast_weight(fn: str, name: str, weight: object, input: torch.Tensor) -> torch.Tensor | None:
    """BCE weight / pos_weight: must broadcast to the input's shape."""
    if weight is None:
        return None
    weight = _tensor(fn, name, weight)
    _floating(fn, name, weight)
    _same_device(fn, name, weight, input)
    try:
        shape = torch.broadcast_shapes(weight.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        hint = " (pos_weight holds one entry per class: the input's last dimension)" if name == "pos_weight" else ""
        raise InvalidArgument(
            f"{fn}: {name} of shape {tuple(weight.shape)} does not broadcast to the input's shape "
            f"{tuple(input.shape)}{hint}"
        )
    return weight


def probabilities_in_unit_interval(fn: str, input: torch.Tensor, name: str = "input") -> None:
    """BCE's input and target (torch checks both): every value in [0, 1], NaN refused."""
    if input.numel() and _values_checked(input):
        lo, hi = torch.aminmax(input.detach())
        if not (lo.item() >= 0.0 and hi.item() <= 1.0):  # also catches NaN
            bad = ~((input >= 0) & (input <= 1))
            where = tuple(int(i) for i in bad.nonzero()[0])
            value = float(input[where]) if where else float(input)
            hint = ("for raw scores use binary_cross_entropy_with_logits" if name == "input"
                    else "targets are labels or probabilities (torch refuses others too)")
            raise InvalidArgument(
                f"{fn}: {name} must hold probabilities in [0, 1], got {value} at index {where}; {hint}"
            )


def deprecated_reduction(reduction: object) -> object:
    """torch's _Reduction.get_enum: 'elementwise_mean' is 'mean', with torch's warning."""
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated, please use reduction='mean' instead.",
            stacklevel=4,
        )
        return "mean"
    return reduction


def loss_dtype(fn: str, dtype: object, input: torch.Tensor) -> torch.dtype | None:
    """The dtype= extension: None (the input's dtype, as torch), the input's dtype, or float32 for a
    16-bit input (the loss of ``input.float()``, computed without that copy)."""
    if dtype is None or dtype == input.dtype:
        return None
    if not isinstance(dtype, torch.dtype):
        raise InvalidArgumentType(f"{fn}: dtype must be a torch.dtype or None, got {dtype!r}")
    if dtype == torch.float32 and input.dtype in (torch.float16, torch.bfloat16):
        return dtype
    raise InvalidArgument(
        f"{fn}: dtype={dtype} with a {input.dtype} input; dtype may be None, the input's dtype, "
        "or torch.float32 for a float16/bfloat16 input"
    )


def unknown_backend(where: str, name: object, names: list[str]) -> None:
    listed = ", ".join(repr(n) for n in names)
    raise ValueError(f"{where}: backend must be one of {listed}, got {name!r}") from None


def triton_unusable(device, importable: bool) -> None:
    """The Triton backend was asked for (use_backend / CROSSENT_BACKEND) where it cannot run."""
    if not importable:
        raise RuntimeError(
            "crossent: backend 'triton' needs Triton, which is not installed: "
            "pip install 'crossent[triton]'"
        ) from None
    if device.type == "cpu":
        raise RuntimeError(
            "crossent: backend 'triton' got CPU tensors; Triton runs them only through its "
            "interpreter: set TRITON_INTERPRET=1 before the first call (slow: for tests), or move "
            "the tensors to a GPU"
        ) from None
    raise RuntimeError(f"crossent: backend 'triton' cannot run on device {str(device)!r}") from None


def recompute_inputs_gone(fn: str) -> None:
    """A second derivative (or a second backward) recomputes the gradient from the inputs, which the
    fused path holds weakly; they were freed."""
    raise RuntimeError(
        f"crossent.{fn}: a second derivative (create_graph=True) or a second backward needs the "
        f"loss's inputs (the logits), and they were freed after the forward; keep a reference to "
        f"them until then (logits = model(x); loss = {fn}(logits, ...)), or compute this loss "
        f"under crossent.use_backend('composite')"
    )


def recompute_inputs_modified(fn: str) -> None:
    raise RuntimeError(
        f"crossent.{fn}: a second derivative (create_graph=True) or a second backward needs the "
        f"loss's inputs as they were in forward, and they were modified in place since (by "
        f"inplace_backward=True or by the caller); compute the loss again, without "
        f"inplace_backward, for higher-order or repeated gradients"
    )


def unsafe_to_autocast(fn: str) -> None:
    raise RuntimeError(
        f"{fn}: torch refuses binary_cross_entropy under CUDA autocast (unsafe to autocast: the "
        f"probabilities may be float16); use binary_cross_entropy_with_logits, or compute outside "
        f"the autocast region with float32 inputs"
    )
