"""Helpers of every check: the message pattern's pieces and the value-check switch."""

from __future__ import annotations

import math
import os

import torch

_value_checks_on_accelerators: bool | None = None  # None: follow the environment variable


def check_values(enabled: bool | None) -> None:
    """Turn value checks on accelerators on (True), off (False), or back to the environment (None)."""
    global _value_checks_on_accelerators
    _value_checks_on_accelerators = enabled


class InvalidArgument(ValueError, RuntimeError):
    """crossent's error for a bad argument value or shape: a ValueError, and a RuntimeError as
    torch's own TORCH_CHECK errors are, so ``except RuntimeError`` around torch's loss still
    catches it."""


class InvalidArgumentType(TypeError, RuntimeError):
    """A bad argument type or dtype: a TypeError, and a RuntimeError as torch's "expected scalar
    type ..." is."""


class TargetOutOfRange(InvalidArgument, IndexError):
    """A class index outside [0, C): also an IndexError, as torch's "Target ... is out of bounds"."""


_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _values_checked(t: torch.Tensor) -> bool:
    """Whether checks may read t's values: on CPU yes, except where no value can be read without
    breaking the caller's program -- under torch.compile tracing (a graph break) and torch.func
    transforms (functorch-wrapped tensors have no single value); there, as on an accelerator by
    default, an out-of-range target fails inside torch's kernels as in torch."""
    if (_compiling is not None and _compiling()) or (_is_wrapped is not None and _is_wrapped(t)):
        return False
    if t.device.type == "cpu":
        return True
    if _value_checks_on_accelerators is not None:
        return _value_checks_on_accelerators
    return os.environ.get("CROSSENT_CHECK_VALUES", "0") not in ("", "0", "false", "False")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


def _tensor(fn: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentType(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _floating(fn: str, name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise InvalidArgumentType(f"{fn}: {name} must be a floating-point tensor, got dtype {t.dtype}")


def _same_device(fn: str, name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    if t.device != input.device:
        raise InvalidArgument(
            f"{fn}: {name} is on {t.device} but input is on {input.device}; move both to one device"
        )


def _finite_number(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(f"{fn}: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgument(f"{fn}: {name} must be finite, got {value}")
    return value
