"""Helpers of every check: the message pattern's pieces and the value-check switch."""

from __future__ import annotations

import math
import numbers
import operator
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


def product_operands(fn: str, operands, input: torch.Tensor, input_name: str = "input", *,
                     cast: str | None = None) -> None:
    """Each (name, tensor) of a linear head's ``operands`` on input's device and in input's dtype
    (the product runs in one dtype); ``cast``: the remedy the dtype message names (default:
    "<name> or <input_name>")."""
    for name, t in operands:
        _same_device(fn, name, t, input)
        if t.dtype != input.dtype:
            raise InvalidArgumentType(
                f"{fn}: {name} has dtype {t.dtype} but {input_name} has dtype {input.dtype}; "
                f"the product runs in one dtype: cast {cast or f'{name} or {input_name}'}"
            )


def torch_int(fn: str, name: str, value: object) -> int:
    """An int argument as torch's argument parser takes it: anything with ``__index__`` (Python
    and numpy integers, one-element integer tensors and arrays), not a bool."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise InvalidArgumentType(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")


def count(fn: str, name: str, value: object, *, minimum: int = 1, what: str = "") -> int | None:
    """An int option of crossent's that counts something (chunk_size, num_classes): None, or an
    int >= minimum (a bool or another type is a TypeError, a smaller int a ValueError)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{fn}: {name} must be an int{what} or None, got {value!r}")
    if value < minimum:
        raise InvalidArgument(f"{fn}: {name} must be >= {minimum}{what}, got {value}")
    return value


def torch_float(fn: str, name: str, value: object, *, allow_bool: bool = True) -> float:
    """A float argument as torch's argument parser takes it: a real number (Python's, a bool
    included, or a numpy scalar) or a 0-d tensor that does not require grad; crossent's own
    options (``allow_bool=False``) refuse a bool."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.requires_grad and not value.is_complex():
            return float(value)
    elif isinstance(value, numbers.Real) and (allow_bool or not isinstance(value, bool)):
        return float(value)
    raise InvalidArgumentType(f"{fn}: {name} must be a number, got {type(value).__name__} {value!r}")


def _finite_number(fn: str, name: str, value: object) -> float:
    """A finite float option of crossent's (an extension: not a bool)."""
    value = torch_float(fn, name, value, allow_bool=False)
    if not math.isfinite(value):
        raise InvalidArgument(f"{fn}: {name} must be finite, got {value}")
    return value


def positive(fn: str, name: str, value: object, *, or_none: bool = False) -> float:
    """A finite number > 0 (``or_none``: the message says None is allowed too; the caller skips
    None)."""
    value = _finite_number(fn, name, value)
    if value <= 0.0:
        raise InvalidArgument(f"{fn}: {name} must be > 0{' (or None)' if or_none else ''}, got {value}")
    return value


def non_negative(fn: str, name: str, value: object) -> float:
    """A finite number >= 0."""
    value = _finite_number(fn, name, value)
    if value < 0.0:
        raise InvalidArgument(f"{fn}: {name} must be >= 0, got {value}")
    return value


def flag(fn: str, name: str, value: object) -> bool:
    """True or False itself (not 0/1, not a tensor)."""
    if not isinstance(value, bool):
        raise InvalidArgumentType(f"{fn}: {name} must be True or False, got {value!r}")
    return value


def label_smoothing(fn: str, value: object) -> float:
    """torch's label_smoothing, in [0, 1]. torch refuses values above 1 and silently computes with
    negative or nan ones (a distribution with negative mass); crossent refuses those too, as
    documented (outside torch's documented range)."""
    value = torch_float(fn, "label_smoothing", value)
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{fn}: label_smoothing must be in [0, 1], got {value}")
    return value
