"""torch.autocast, as torch's cross-entropy family meets it.

NLL and the binary losses are computed by crossent's kernels in float32 chunk by chunk anyway: under
autocast their options carry ``dtype=torch.float32`` (the loss's dtype), so nothing is copied.

Under autocast torch runs cross_entropy, nll_loss and both binary losses with its fp32 cast
policy: every float16/bfloat16 floating argument is read as float32 and the loss is float32
(float64 is left alone); binary_cross_entropy is refused on CUDA ("unsafe to autocast"). F.linear
runs in the autocast dtype, so torch's linear cross-entropy is cross_entropy(float32(16-bit
product)). crossent returns the same: 16-bit logits are *not* copied to float32 (the ``dtype=``
path computes in float32 chunk by chunk and returns the float32 loss, the gradient in the
logits' dtype), and crossent's own kernels then run with autocast off, so that their internal
products and reductions keep the precision they are written for.

torch's own kernels (the torch-first route) meet autocast in its dispatcher and need none of this.
"""

from __future__ import annotations

import contextlib

import torch

from . import _checks

_HALF = (torch.float16, torch.bfloat16)


def _enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _dtype(device_type: str) -> torch.dtype:
    getter = getattr(torch, "get_autocast_dtype", None)
    if getter is not None:
        return getter(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def active(input: object) -> bool:
    """Autocast is on for the input's device."""
    return isinstance(input, torch.Tensor) and _enabled(input.device.type)


def fp32(t):
    """torch's fp32 cast policy for one argument: 16-bit floating tensors -> float32."""
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t


def cross_entropy_args(input, target, weight, dtype):
    """(target, weight, dtype) as torch's fp32 policy sees them; the input stays as it is and
    ``dtype=torch.float32`` makes the loss float32 without a float32 copy of it."""
    if input.dtype in _HALF:
        dtype = torch.float32
    target = fp32(target) if target.is_floating_point() else target
    return target, fp32(weight), dtype


def loss_dtype(input) -> torch.dtype | None:
    """float32 for a 16-bit input under autocast (the loss torch returns), else None."""
    return torch.float32 if isinstance(input, torch.Tensor) and input.dtype in _HALF and active(input) else None


def binary_loss_dtype(fn: str, input) -> torch.dtype | None:
    """`loss_dtype`, and binary_cross_entropy refused under CUDA autocast, as torch refuses it."""
    if fn == "binary_cross_entropy" and isinstance(input, torch.Tensor) and input.device.type == "cuda" and active(input):
        _checks.unsafe_to_autocast(fn)
    return loss_dtype(input)


def linear_args(input, linear_weight, linear_bias, weight, dtype):
    """F.linear runs in the autocast dtype, the cross-entropy in float32 (float64 is left alone)."""
    if input.dtype == torch.float64:
        return input, linear_weight, linear_bias, weight, dtype
    low = _dtype(input.device.type)
    cast = lambda t: t.to(low) if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, *_HALF) else t
    return cast(input), cast(linear_weight), cast(linear_bias), fp32(weight), torch.float32


def maybe_off(input):
    """Autocast off for crossent's kernels (their inputs cast as torch's policy says) when it is
    active for the input's device, else a no-op context."""
    return torch.autocast(input.device.type, enabled=False) if active(input) else contextlib.nullcontext()
