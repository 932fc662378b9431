"""Rule 2 of the routing rule (`_dispatch` has the whole rule), on the raw arguments: does torch's
own kernel take this call. Asked *before* crossent's checks, for speed: these predicates are on the
path of every small call (a few hundred nanoseconds); their answer is handed to the rule after the
checks. The commonest small call, `cross_entropy` without crossent's options, asks this rule inline
(`functional.cross_entropy`: the call of a predicate cost 0.2 us of its 0.35 us above F's wrapper),
and `plain_linear_cross_entropy_on_torch` asks it and calls torch's composition for the linear one.

The CPU crossovers are module values (the fused backend's descriptor has them with their
measurements): read on the path of every small call, by `_dispatch`'s log-probability rule too
(one value for both), and pinned by tests.
"""

from __future__ import annotations

import torch

from . import _backends, _forced
from ._backends import Backend, descriptor, forced, fused_for

_cpu = _backends.backend(Backend.FUSED)
_torch_kernels = _backends.backend(Backend.TORCH)
# torch's cross-entropy kernel and what its arguments need, for `plain_linear_cross_entropy_on_torch`
_ce_kernel, _REDUCTION_ENUM = _torch_kernels.CE_KERNEL, _torch_kernels.REDUCTION_ENUM
_has_torch_function = _torch_kernels.has_torch_function
_BAD_INPUT, _NOT_BAD_INPUT = _torch_kernels.BAD_INPUT, _torch_kernels.NOT_BAD_INPUT
TORCH_MAX_NUMEL = _cpu.TORCH_MAX_NUMEL
TORCH_MAX_NUMEL_NO_GRAD = _cpu.TORCH_MAX_NUMEL_NO_GRAD
BINARY_TORCH_MAX_NUMEL = _cpu.BINARY_TORCH_MAX_NUMEL
LINEAR_TORCH_MAX_LOGITS = _cpu.LINEAR_TORCH_MAX_LOGITS
KDIM_TORCH_MAX_NUMEL = _cpu.KDIM_TORCH_MAX_NUMEL
KDIM_TORCH_ANY_SIZE_CLASSES = _cpu.KDIM_TORCH_ANY_SIZE_CLASSES

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_HALF = (torch.float16, torch.bfloat16)


def by_size(input, limit: int, limit_no_grad: int, family: str = "cross_entropy", *, k_dim: bool = False) -> bool:
    """Rule 2's size test: torch's kernel at most ``limit`` elements (``limit_no_grad`` when no
    gradient will be needed; with ``k_dim``, an input of more than two dimensions with its classes
    in dim 1, KDIM_TORCH_MAX_NUMEL, or any size with at most KDIM_TORCH_ANY_SIZE_CLASSES classes) on
    the CPU; off it, below the device's fused backend's threshold. Ordered for the small call: one
    numel() and done."""
    n = input.numel()
    if n <= limit:  # (small enough either way: the device and gradient questions cost calls)
        return True
    if not input.is_cpu:
        needs_grad = input.requires_grad and _grad_enabled()
        return n <= descriptor(fused_for(input.device)).torch_below(family, needs_grad, input.device)
    if k_dim and input.dim() > 2 and (n <= KDIM_TORCH_MAX_NUMEL or input.shape[1] <= KDIM_TORCH_ANY_SIZE_CLASSES):
        return True
    return n <= limit_no_grad and not (input.requires_grad and _grad_enabled())


REFUSED = object()  # torch's kernel refused the arguments of a call


def cross_entropy_to_torch(input, label_smoothing, z_loss, softcap, inplace_backward, dtype) -> bool:
    """Rules 1-2 for cross_entropy on the raw arguments. On the path of every small call: written
    for speed (the common case passes the first test and returns at the last line)."""
    if (z_loss or inplace_backward or softcap is not None or dtype is not None or _forced.active
            or _backends.ENV_BACKEND or not 0.0 <= label_smoothing <= 1.0):
        return _cross_entropy_to_torch_otherwise(input, label_smoothing, z_loss, softcap, inplace_backward, dtype)
    return isinstance(input, _Tensor) and by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD, k_dim=True)


def _cross_entropy_to_torch_otherwise(input, label_smoothing, z_loss, softcap, inplace_backward, dtype) -> bool:
    if z_loss or inplace_backward or softcap is not None:
        return False
    if not 0.0 <= label_smoothing <= 1.0:  # torch silently accepts negative and nan smoothing
        return False
    if dtype is not None and not (dtype is torch.float32 and isinstance(input, _Tensor) and input.dtype in _HALF):
        return False
    if (_forced.active or _backends.ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    return isinstance(input, _Tensor) and by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD, k_dim=True)


def nll_loss_to_torch(input) -> bool:
    """Rules 1-2 for nll_loss on the raw arguments (it has no crossent-only option)."""
    if (_forced.active or _backends.ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    if not isinstance(input, _Tensor):
        return False
    if input.is_cpu:
        # nll_loss is a gather forward and a scatter backward, in torch's kernel as in the fused
        # backend's torch ops; torch's reduces in a fixed order (bitwise the same at 1 and 2
        # threads, with and without class weights, 'mean' and 'sum', checked at 65536 x 100,
        # 4096 x 32000 and (16, 100, 64, 64)). Fused/torch forward+backward: 1.16 at 4096 x 1000,
        # 1.00 at 2048 x 32000; without a gradient 2.9 at 2048 x 32000 (the Intel VM).
        return True
    return by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)


def binary_to_torch(input) -> bool:
    """Rules 1-2 for the binary losses on the raw arguments."""
    if (_forced.active or _backends.ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    return isinstance(input, _Tensor) and by_size(
        input, BINARY_TORCH_MAX_NUMEL, BINARY_TORCH_MAX_NUMEL, "binary")


def _one_device(first, *others) -> bool:
    """Every tensor (None skipped) on first's device, and that not meta: torch would compute a
    meta loss from a meta weight, silently, and meet a mixed-device call with its own message,
    not crossent's. (Callers test ``is_cpu`` first: torch.device objects, built per ``.device``
    access, cost ~0.5 us more on the small CPU call.)"""
    dev = first.device
    if dev.type == "meta":
        return False
    for t in others:
        if t is not None and t.device != dev:
            return False
    return True


def linear_to_torch(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
                    extensions: bool) -> bool:
    """Rules 1-2 for linear_cross_entropy on the raw arguments: the composition F.linear +
    cross_entropy for small problems with 2-D input, where the fused loop's Python cost
    dominates. ``extensions``: any crossent-only argument (or ``options``) is set. Written for
    speed: what torch itself refuses (dtypes, shapes, a K-dim weight F.linear cannot take) is not
    tested here -- torch raises, and crossent's checks run."""
    if extensions or not 0.0 <= label_smoothing <= 1.0:
        return False
    if type(input) is not _Tensor or type(linear_weight) is not _Tensor or type(target) is not _Tensor:
        return False  # (subclasses take the checked path)
    if (linear_bias is not None and type(linear_bias) is not _Tensor) or (
        weight is not None and type(weight) is not _Tensor
    ):
        return False
    if input.dim() != 2:
        return False
    if not (input.is_cpu and linear_weight.is_cpu and target.is_cpu  # (the small CPU call: ~0.2 us)
            and (linear_bias is None or linear_bias.is_cpu) and (weight is None or weight.is_cpu)):
        if not _one_device(input, linear_weight, target, linear_bias, weight):
            return False
    if ignore_index is not None and target.is_floating_point():
        return False  # torch refuses ignore_index with probabilities: the checks say so
    if (_forced.active or _backends.ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    return input.shape[0] * linear_weight.shape[0] <= LINEAR_TORCH_MAX_LOGITS


_linear = torch._C._nn.linear


def plain_linear_cross_entropy_on_torch(input, linear_weight, target, linear_bias, weight, reduction,
                                        ignore_index, label_smoothing):
    """Rules 1-2 and torch's composition (F.linear, then its cross-entropy kernel) in one call, for
    linear_cross_entropy without crossent-only arguments on a 2-D CPU input and weight, when no
    __torch_function__ override or mode is active (parameters are plain tensors here; a mode
    sees F.linear and F.cross_entropy, through `linear_to_torch`'s route). Returns the loss; None
    when the whole rule must decide (`linear_to_torch` then asks again, for other devices);
    REFUSED when torch refused the arguments (a target, bias or class weight on another device
    included: torch raises, the checks name it). The input and weight must be on the CPU here:
    torch computes F.linear of a CPU input and a meta weight silently.

    Ordered by cost (each accessor 40-90 ns beside the kernels, a shape 90): at (64, 32) x 10
    without a gradient this path cost 1.07 us above the two kernels with `linear_to_torch`'s
    tests (exact types, five devices, dim and two shapes), 0.42 us for F.linear +
    F.cross_entropy."""
    if _forced.active or _backends.ENV_BACKEND or _has_torch_function(input, linear_weight, target, linear_bias, weight):
        return None
    try:
        if not (input.is_cpu and linear_weight.is_cpu) or input.dim() != 2:
            return None
        bound = input.numel() * linear_weight.numel()  # >= N * V (D >= 1): exact shapes only above
        if (bound > LINEAR_TORCH_MAX_LOGITS or bound == 0) and (
                input.shape[0] * linear_weight.shape[0] > LINEAR_TORCH_MAX_LOGITS):
            return None
    except AttributeError:  # (not tensors: the checks say so)
        return None
    r = _REDUCTION_ENUM.get(reduction)
    if r is None or _ce_kernel is None or not 0.0 <= label_smoothing <= 1.0:
        return None
    if ignore_index is None:
        ignore_index = -100
    elif target.is_floating_point():
        return None  # torch refuses ignore_index with probabilities: the checks say so
    try:
        return _ce_kernel(_linear(input, linear_weight, linear_bias), target, weight, r, ignore_index, label_smoothing)
    except _BAD_INPUT as err:
        if isinstance(err, _NOT_BAD_INPUT):
            raise
        return REFUSED
