"""torch's own kernels, for small CPU inputs where a Python-level fused path cannot win.

Two kinds of entry:
* ``*_unchecked``: called by `functional` *before* crossent's checks, with the public arguments,
  so that a small call costs torch's kernel plus well under a microsecond. If torch refuses the
  arguments it raises one of `BAD_INPUT` and `functional` runs crossent's checks, which name the
  problem (or accept what torch refuses, such as int32 class indices, and dispatch again).
  Anything else -- `NOT_BAD_INPUT` (out of memory, a device error), or an exception type torch
  does not raise for bad arguments -- propagates untouched.
* the contract functions (`cross_entropy`, ..., `linear_cross_entropy`) with checked arguments
  and `LossOptions`, for `_dispatch` to return like any backend's.

The kernels behind torch.nn.functional are called directly when no __torch_function__ override or
mode is active (the same test F makes): at 64 x 10 forward-only, torch's whole call takes ~6 us
and F's Python wrapper ~1 us of it. Determinism: torch's class-index kernels reduce in a fixed
order; where torch ends in a thread-dependent full sum (probability targets, the binary losses
above its grain size) the per-sample losses are reduced by `common.fixed_order_reduce`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as _torch_F

from .._options import LossOptions
from . import Descriptor
from .common import SERIAL_REDUCTION, fixed_order_reduce

# What torch raises for arguments it refuses (shapes, dtypes, devices, target values, types).
BAD_INPUT = (RuntimeError, ValueError, TypeError, IndexError)
# ... except these, which say nothing about the arguments: they propagate.
NOT_BAD_INPUT = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch, "AcceleratorError", None))
    if t is not None
)

_has_torch_function = torch.overrides.has_torch_function_variadic
# torch.nn._reduction.get_enum; an unknown reduction becomes None, which the kernel refuses
# (TypeError), so crossent's checks name it
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}
_ce_kernel = getattr(torch._C._nn, "cross_entropy_loss", None)
# (public names for `functional.cross_entropy` and `_to_torch`, which call the kernel themselves)
CE_KERNEL, REDUCTION_ENUM, has_torch_function = _ce_kernel, _REDUCTION_ENUM, _has_torch_function
_nll_kernel = getattr(torch._C._nn, "nll_loss_nd", None)


def _ce(x, target, weight, ignore_index, reduction, label_smoothing):
    if _ce_kernel is None or _has_torch_function(x, target, weight):
        return _torch_F.cross_entropy(
            x, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )
    return _ce_kernel(x, target, weight, _REDUCTION_ENUM.get(reduction), ignore_index, label_smoothing)


def cross_entropy_unchecked(input, target, weight, ignore_index, reduction, label_smoothing, dtype):
    """torch's cross_entropy (on ``input.to(dtype)`` for dtype=float32: small here, the copy
    costs less than the fused path)."""
    x = input if dtype is None else input.to(dtype)
    if target.is_floating_point() and reduction != "none" and x.numel() > SERIAL_REDUCTION:
        # torch's probability-target path ends in a full .sum() whose order depends on the
        # thread count: take its per-sample losses and reduce them in a fixed order.
        return fixed_order_reduce(_ce(x, target, weight, ignore_index, "none", label_smoothing), reduction)
    if _ce_kernel is not None and not _has_torch_function(x, target, weight):
        # _ce, inlined: this line runs for every small call
        return _ce_kernel(x, target, weight, _REDUCTION_ENUM.get(reduction), ignore_index, label_smoothing)
    return _ce(x, target, weight, ignore_index, reduction, label_smoothing)


def nll_loss_unchecked(input, target, weight, ignore_index, reduction):
    if _nll_kernel is None or _has_torch_function(input, target, weight):
        return _torch_F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    return _nll_kernel(input, target, weight, _REDUCTION_ENUM.get(reduction), ignore_index)


def _binary(loss, input, reduction, *args, **kwargs):
    """A binary loss of torch's: its own reduction where that is serial, else a fixed-order one."""
    if input.numel() <= SERIAL_REDUCTION:
        return loss(input, *args, reduction=reduction, **kwargs)
    return fixed_order_reduce(loss(input, *args, reduction="none", **kwargs), reduction)


def binary_cross_entropy_unchecked(input, target, weight, reduction):
    return _binary(_torch_F.binary_cross_entropy, input, reduction, target, weight)


def binary_cross_entropy_with_logits_unchecked(input, target, weight, reduction, pos_weight):
    return _binary(
        _torch_F.binary_cross_entropy_with_logits, input, reduction, target, weight,
        pos_weight=pos_weight,
    )


def linear_cross_entropy_unchecked(input, linear_weight, target, linear_bias, weight, reduction,
                                   ignore_index, label_smoothing):
    """torch's reference linear cross-entropy, literally: F.linear, then cross_entropy.
    (`_to_torch.linear_to_torch` sends only 2-D input and weight here; nothing else is checked.)"""
    logits = _torch_F.linear(input, linear_weight, linear_bias)  # (N, V)
    return _ce(logits, target, weight, -100 if ignore_index is None else ignore_index, reduction,
               label_smoothing)


# ---------------------------------------------------------------- the backend contract


def cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    return cross_entropy_unchecked(
        input, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing, opts.dtype
    )


def _to(dtype, *tensors):
    """With a loss dtype (float32 under autocast): every floating argument in it, as autocast's
    fp32 policy casts them for torch's kernel (small here, or off the CPU where torch runs)."""
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    input, weight = _to(opts.dtype, input, weight)
    return nll_loss_unchecked(input, target, weight, opts.ignore_index, opts.reduction)


def binary_cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    input, target, weight = _to(opts.dtype, input, target, weight)
    return binary_cross_entropy_unchecked(input, target, weight, opts.reduction)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions) -> torch.Tensor:
    input, target, weight, pos_weight = _to(opts.dtype, input, target, weight, pos_weight)
    return binary_cross_entropy_with_logits_unchecked(input, target, weight, opts.reduction, pos_weight)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions) -> torch.Tensor:
    """The composition, for checked arguments of any shape: input (N, D), linear_weight
    (V, *out, D); ``normalizer`` divides the summed loss; ``dtype`` casts the (small) logits."""
    v, d = linear_weight.shape[0], linear_weight.shape[-1]
    out = tuple(linear_weight.shape[1:-1])
    w2 = linear_weight.reshape(-1, d) if out else linear_weight
    b1 = linear_bias.reshape(-1) if out and linear_bias is not None else linear_bias
    logits = _torch_F.linear(input, w2, b1)
    if out:
        logits = logits.reshape(input.shape[0], v, *out)
    if opts.dtype is not None:
        logits = logits.to(opts.dtype)
    reduction = "sum" if opts.normalizer is not None else opts.reduction
    loss = cross_entropy_unchecked(
        logits, target, weight, opts.ignore_index, reduction, opts.label_smoothing, None
    )
    return loss / opts.normalizer if opts.normalizer is not None else loss


def log_probs(input, target, opts: LossOptions, entropy: bool):
    """torch's own composition, as TRL writes it (``selective_log_softmax`` +
    ``entropy_from_logits``): log_softmax, gather, and the entropy from the same log_softmax, in
    the compute dtype (float32; float64 for float64), 0 log 0 taken as 0. For small inputs, where
    torch's fused log_softmax beats any Python-level chunk loop."""
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    z = input.to(acc)
    if opts.softcap is not None:
        z = torch.tanh(z / opts.softcap) * opts.softcap
    if opts.temperature != 1.0:
        z = z / opts.temperature
    log_p = _torch_F.log_softmax(z, -1)
    valid = target != opts.ignore_index
    picked = log_p.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
    lp = torch.where(valid, picked, 0.0)
    if not entropy:
        return lp
    p = log_p.exp()
    h = -(p * torch.where(p > 0, log_p, 0.0)).sum(-1)
    return lp, torch.where(valid, h, 0.0)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool):
    return log_probs(_torch_F.linear(input, linear_weight, linear_bias), target, opts, entropy)


DESCRIPTOR = Descriptor(runs_on=lambda device: True)
