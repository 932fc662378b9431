"""Argument and input validation for every public loss: every error message of crossent lives here.

Messages follow one pattern: ``"<function>: <argument> <what is wrong>, got <value>"``. Checks that
only look at Python values and tensor metadata run on every call (they cost no device work). Checks
that read tensor *values* (class-index targets in range, BCE probabilities in [0, 1]) need the data:
on CPU they always run (a few microseconds); on an accelerator they force a device->host sync, so
they run only when enabled with ``CROSSENT_CHECK_VALUES=1`` in the environment (read at call time)
or ``crossent.check_values(True)``. Without them an out-of-range target on a GPU fails inside the
kernel, as it does in PyTorch.
"""

from __future__ import annotations

import math
import os

import torch

from ._options import LossOptions

_REDUCTIONS = ("none", "mean", "sum")
_value_checks_on_accelerators: bool | None = None  # None: follow the environment variable


def check_values(enabled: bool | None) -> None:
    """Turn value checks on accelerators on (True), off (False), or back to the environment (None)."""
    global _value_checks_on_accelerators
    _value_checks_on_accelerators = enabled


def _values_checked(t: torch.Tensor) -> bool:
    if t.device.type == "cpu":
        return True
    if _value_checks_on_accelerators is not None:
        return _value_checks_on_accelerators
    return os.environ.get("CROSSENT_CHECK_VALUES", "0") not in ("", "0", "false", "False")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


def _tensor(fn: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _floating(fn: str, name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got dtype {t.dtype}")


def _same_device(fn: str, name: str, t: torch.Tensor, input: torch.Tensor) -> None:
    if t.device != input.device:
        raise ValueError(
            f"{fn}: {name} is on {t.device} but input is on {input.device}; move both to one device"
        )


def reduction(fn: str, value: object) -> str:
    if value not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {value!r}")
    return value  # type: ignore[return-value]


def _finite_number(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be finite, got {value}")
    return value


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
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{fn}: ignore_index must be an int, got {ignore_index!r}")
    reduction(fn, reduction_)
    label_smoothing = _finite_number(fn, "label_smoothing", label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing}")
    z_loss = _finite_number(fn, "z_loss", z_loss)
    if z_loss < 0.0:
        raise ValueError(f"{fn}: z_loss must be >= 0, got {z_loss}")
    if softcap is not None:
        softcap = _finite_number(fn, "softcap", softcap)
        if softcap <= 0.0:
            raise ValueError(f"{fn}: softcap must be > 0 (or None), got {softcap}")
    if normalizer is not None:
        if isinstance(normalizer, torch.Tensor):
            if normalizer.numel() != 1:
                raise ValueError(
                    f"{fn}: normalizer must be a number or a one-element tensor, "
                    f"got a tensor of shape {_shape(normalizer)}"
                )
            normalizer = normalizer.item()
        normalizer = _finite_number(fn, "normalizer", normalizer)
        if normalizer <= 0.0:
            raise ValueError(f"{fn}: normalizer must be > 0 (or None), got {normalizer}")
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"{fn}: inplace_backward must be True or False, got {inplace_backward!r}")
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


def class_targets(
    fn: str, input: torch.Tensor, target: object, *, class_dim_size: int, ignore_index: int
) -> torch.Tensor:
    """Check class-index targets against input (N, C, d1..dk) or (C,); return them as int64.

    Accepts int64 and uint8 (as torch does) and any other integer dtype (converted). Values must
    lie in [0, C) or equal ignore_index.
    """
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        expected = "()" if input.dim() == 1 else _shape(input[:, 0]) if input.dim() > 1 else ""
        raise TypeError(
            f"{fn}: target of class indices must be an integer tensor (int64) of shape {expected}, "
            f"got {target.dtype} of shape {_shape(target)}; class probabilities need a floating "
            f"target of the input's shape {_shape(input)}"
        )
    expected_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
    if target.shape != expected_shape:
        raise ValueError(
            f"{fn}: target of class indices must have shape {tuple(expected_shape)} for input of "
            f"shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if target.dtype != torch.int64:
        target = target.long()
    _class_index_range(fn, target, class_dim_size, ignore_index)
    return target


def _class_index_range(fn: str, target: torch.Tensor, class_dim_size: int, ignore_index: int) -> None:
    """Every int64 class index lies in [0, C) or equals ignore_index (value check, see above)."""
    if target.numel() and _values_checked(target):
        lo, hi = torch.aminmax(target)
        if lo.item() < 0 or hi.item() >= class_dim_size:
            bad = (target != ignore_index) & ((target < 0) | (target >= class_dim_size))
            if bool(bad.any()):
                where = tuple(int(i) for i in bad.nonzero()[0])
                value = int(target[where]) if where else int(target)
                raise ValueError(
                    f"{fn}: target contains {value} at index {where}, outside the classes "
                    f"[0, {class_dim_size}) and not ignore_index={ignore_index}"
                )


def logits_input(fn: str, input: object) -> torch.Tensor:
    input = _tensor(fn, "input", input)
    _floating(fn, "input", input)
    if input.dim() == 0:
        raise ValueError(f"{fn}: input must have a class dimension (shape (C,) or (N, C, ...)), got a scalar")
    return input


def prob_targets(fn: str, input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Class-probability targets: a floating tensor of the input's shape; nothing to ignore."""
    _same_device(fn, "target", target, input)
    if ignore_index >= 0:
        raise ValueError(
            f"{fn}: ignore_index={ignore_index} cannot apply to class-probability targets "
            f"(torch refuses it too); leave ignore_index at its default -100"
        )
    if target.shape != input.shape:
        raise ValueError(
            f"{fn}: target of class probabilities must have the input's shape "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )


def is_prob_target(input: torch.Tensor, target: object) -> bool:
    """torch's rule: a floating target of the input's shape holds class probabilities."""
    return isinstance(target, torch.Tensor) and target.is_floating_point() and target.shape == input.shape


def class_weight(
    fn: str, weight: object, input: torch.Tensor, num_classes: int, name: str = "weight"
) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = _tensor(fn, name, weight)
    _floating(fn, name, weight)
    _same_device(fn, name, weight, input)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"{fn}: {name} must be a 1-D tensor with one entry per class ({num_classes}), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.dtype != input.dtype:  # torch: "expected scalar type ... but found ..."
        raise TypeError(
            f"{fn}: {name} has dtype {weight.dtype} but input has dtype {input.dtype}; torch "
            f"requires one dtype: pass {name}.to({input.dtype})"
        )
    return weight


def inplace_input(fn: str, input: torch.Tensor) -> None:
    """The gradient can only be written into storage where every element has its own address."""
    if any(st == 0 and sz > 1 for st, sz in zip(input.stride(), input.shape)):
        raise ValueError(
            f"{fn}: inplace_backward=True needs an input whose elements do not share memory "
            f"(got an expanded tensor with strides {input.stride()}); pass input.contiguous()"
        )


def binary_pair(fn: str, input: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    input = _tensor(fn, "input", input)
    target = _tensor(fn, "target", target)
    _floating(fn, "input", input)
    _same_device(fn, "target", target, input)
    if target.shape != input.shape:
        raise ValueError(
            f"{fn}: target must have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if not target.is_floating_point():
        raise TypeError(
            f"{fn}: target must be a floating-point tensor of 0/1 labels or probabilities, "
            f"got {target.dtype}; use target.float()"
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
        raise ValueError(
            f"{fn}: {name} of shape {tuple(weight.shape)} does not broadcast to the input's shape "
            f"{tuple(input.shape)}{hint}"
        )
    return weight


def probabilities_in_unit_interval(fn: str, input: torch.Tensor) -> None:
    if input.numel() and _values_checked(input):
        lo, hi = torch.aminmax(input.detach())
        if not (lo.item() >= 0.0 and hi.item() <= 1.0):  # also catches NaN
            bad = ~((input >= 0) & (input <= 1))
            where = tuple(int(i) for i in bad.nonzero()[0])
            value = float(input[where]) if where else float(input)
            raise ValueError(
                f"{fn}: input must hold probabilities in [0, 1], got {value} at index {where}; "
                f"for raw scores use binary_cross_entropy_with_logits"
            )


# ----------------------------------------------------------------------------------------------
# linear_cross_entropy (torch 2.13's semantics): input (N, D) or (D,), linear_weight (C, D) or
# (C, d1..dk, D), linear_bias (C, d1..dk), target (N, d1..dk) / () or probabilities shaped like
# the logits (N, C, d1..dk) / (C,).


def linear_operands(fn: str, input: object, linear_weight: object, linear_bias: object) -> None:
    """The operands of the linear layer: shapes that multiply, one dtype, one device."""
    input = _tensor(fn, "input", input)
    _floating(fn, "input", input)
    if input.dim() not in (1, 2):
        raise ValueError(
            f"{fn}: input must have shape (in_features,) or (N, in_features), as in torch, got "
            f"shape {tuple(input.shape)}; flatten the leading dimensions: "
            f"input.reshape(-1, {input.shape[-1] if input.dim() else 'D'}) and target.reshape(-1)"
        )
    linear_weight = _tensor(fn, "linear_weight", linear_weight)
    if linear_weight.dim() < 2 or linear_weight.shape[-1] != input.shape[-1]:
        raise ValueError(
            f"{fn}: linear_weight must have shape (C, in_features) or (C, d1, ..., dk, "
            f"in_features) with in_features = input.shape[-1] = {input.shape[-1]}, got "
            f"linear_weight of shape {tuple(linear_weight.shape)} for input of shape "
            f"{tuple(input.shape)}"
        )
    out_features = tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() != 2:
        raise ValueError(
            f"{fn}: K-dimensional loss defined by linear_weight of shape "
            f"{tuple(linear_weight.shape)} requires batched input (N, {input.shape[-1]}), got "
            f"shape {tuple(input.shape)}"
        )
    operands = [("linear_weight", linear_weight)]
    if linear_bias is not None:
        linear_bias = _tensor(fn, "linear_bias", linear_bias)
        expected = tuple(linear_weight.shape[:-1])
        if tuple(linear_bias.shape) != expected:
            raise ValueError(
                f"{fn}: linear_bias must have shape {expected}, one entry per row of "
                f"linear_weight, got {tuple(linear_bias.shape)}"
            )
        operands.append(("linear_bias", linear_bias))
    for name, t in operands:
        _same_device(fn, name, t, input)
        if t.dtype != input.dtype:
            raise TypeError(
                f"{fn}: {name} has dtype {t.dtype} but input has dtype {input.dtype}; "
                f"the product runs in one dtype: cast {name} or input"
            )


def linear_targets(
    fn: str, input: torch.Tensor, linear_weight: torch.Tensor, target: object, ignore_index: int | None
) -> tuple[torch.Tensor, bool, int]:
    """torch's rule: class probabilities exactly when target.shape equals the logits' shape
    (*input.shape[:-1], C, d1..dk); otherwise class indices of shape (*input.shape[:-1], d1..dk).

    Returns (target, soft, ignore_index): int64 indices (value-checked as for cross_entropy) or the
    probabilities, and ignore_index with None mapped to -100.
    """
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    num_classes = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    batch = tuple(input.shape[:-1])
    logits_shape = batch + (num_classes,) + out_features
    if tuple(target.shape) == logits_shape:
        if not target.is_floating_point():
            raise TypeError(
                f"{fn}: a target of the logits' shape {logits_shape} holds class probabilities and "
                f"must be floating-point, got {target.dtype}; class indices have shape "
                f"{batch + out_features}"
            )
        if ignore_index is not None:
            raise ValueError(
                f"{fn}: ignore_index={ignore_index} cannot be specified when target contains "
                f"class probabilities (torch refuses it too); leave ignore_index=None"
            )
        return target, True, -100
    if isinstance(ignore_index, bool) or (ignore_index is not None and not isinstance(ignore_index, int)):
        raise TypeError(f"{fn}: ignore_index must be an int or None, got {ignore_index!r}")
    ignore_index = -100 if ignore_index is None else ignore_index
    expected = batch + out_features
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"{fn}: target of class indices must be an integer tensor (int64) of shape {expected}, "
            f"got {target.dtype} of shape {_shape(target)}; class probabilities need a floating "
            f"target of the logits' shape {logits_shape}"
        )
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{fn}: target of class indices must have shape {expected} for input of shape "
            f"{tuple(input.shape)} and linear_weight of shape {tuple(linear_weight.shape)}, got "
            f"{tuple(target.shape)}"
        )
    if target.dtype != torch.int64:
        target = target.long()
    _class_index_range(fn, target, num_classes, ignore_index)
    return target, False, ignore_index


_OPTION_FIELDS = ("allow_retain_graph", "batch_chunk_size", "chunking_method", "acc_policy", "acc_dtype")


def linear_chunking(
    fn: str, opts_reduction: str, normalizer: float | None, chunk_size: object, options: object,
    num_tokens: int, in_features: int, num_classes: int,
) -> tuple[int | None, bool]:
    """(rows per chunk or None for crossent's rule, allow_retain_graph) from crossent's
    ``chunk_size`` and torch's ``options`` (a LinearCrossEntropyOptions, or any object with its
    fields). normalizer needs reduction='mean'."""
    if normalizer is not None and opts_reduction != "mean":
        raise ValueError(
            f"{fn}: normalizer={normalizer} replaces the denominator of reduction='mean', "
            f"got reduction={opts_reduction!r}; use reduction='mean' (or divide the 'sum' yourself)"
        )
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"{fn}: chunk_size must be an int (rows per chunk) or None, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"{fn}: chunk_size must be >= 1 (rows per chunk), got {chunk_size}")
    if options is None:
        return chunk_size, False
    missing = [f for f in _OPTION_FIELDS if not hasattr(options, f)]
    if missing:
        raise TypeError(
            f"{fn}: options must be a torch.nn.LinearCrossEntropyOptions or None, got "
            f"{type(options).__name__} (no {', '.join(missing)})"
        )
    rows = options.batch_chunk_size
    method = options.chunking_method
    if method == "auto" and rows is None:
        rows = None  # crossent's measured rule
    elif method is None or method == "auto":
        rows = num_tokens if rows is None else min(rows, num_tokens)  # torch: None = one chunk
    else:  # "aspect_ratio[:k]", torch's formula: next_pow2(ceil(N / ceil(C / D))) // k
        factor = int(method.split(":", 1)[1]) if ":" in method else 1
        target = -(-num_tokens // -(-num_classes // max(in_features, 1)))
        computed = min((1 << (target - 1).bit_length()) // factor, num_tokens)
        if rows is not None and rows != computed:
            raise ValueError(
                f"{fn}: options.batch_chunk_size={rows} and chunking_method={method!r} give "
                f"different chunk sizes ({rows} vs {computed}); pass only one"
            )
        rows = computed
    if rows is not None:
        rows = max(1, rows)
    if chunk_size is not None and rows is not None and chunk_size != rows:
        raise ValueError(
            f"{fn}: chunk_size={chunk_size} and options (which give {rows} rows per chunk) "
            f"disagree; pass only one"
        )
    return chunk_size if chunk_size is not None else rows, bool(options.allow_retain_graph)


def loss_dtype(fn: str, dtype: object, input: torch.Tensor) -> torch.dtype | None:
    """The dtype= extension: None (the input's dtype, as torch), the input's dtype, or float32 for a
    16-bit input (the loss of ``input.float()``, computed without that copy)."""
    if dtype is None or dtype == input.dtype:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{fn}: dtype must be a torch.dtype or None, got {dtype!r}")
    if dtype == torch.float32 and input.dtype in (torch.float16, torch.bfloat16):
        return dtype
    raise ValueError(
        f"{fn}: dtype={dtype} with a {input.dtype} input; dtype may be None, the input's dtype, "
        "or torch.float32 for a float16/bfloat16 input"
    )


def linear_no_fused_gradient(fn: str, **tensors: torch.Tensor | None) -> None:
    """The fused path differentiates w.r.t. input, weight and bias only; refuse to drop a gradient."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{fn}: {name} requires grad, but the fused path gives gradients only for input, "
                f"weight and bias; pass {name}.detach(), or run under "
                f"crossent.use_backend('reference') (it materialises the logits)"
            )


def fused_gradient_consumed(fn: str) -> None:
    """A fused loss computed its gradients once; a second backward through it has none to give."""
    raise RuntimeError(
        f"crossent.{fn}: the fused gradient of this loss was already handed to a previous "
        f"backward(); backward through the same loss twice (retain_graph=True) is not supported "
        f"by the fused path: compute the loss again for a second backward"
    )


def unknown_backend(where: str, name: object, names: list[str]) -> None:
    listed = ", ".join(repr(n) for n in names)
    raise ValueError(f"{where}: backend must be one of {listed}, got {name!r}") from None


def linear_module(fn: str, in_features, num_classes, out_features, weight, label_smoothing) -> None:
    """LinearCrossEntropyLoss's constructor arguments (torch checks the class weight and the
    smoothing there too; the rest are checked at every call)."""
    for name, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
    if not isinstance(out_features, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in out_features
    ):
        raise ValueError(f"{fn}: out_features must be a tuple of positive ints, got {out_features!r}")
    if weight is not None:
        weight = _tensor(fn, "weight", weight)
        if tuple(weight.shape) != (num_classes,):
            raise ValueError(
                f"{fn}: weight must be a 1-D tensor with one entry per class ({num_classes}), "
                f"got shape {tuple(weight.shape)}"
            )
    smoothing = _finite_number(fn, "label_smoothing", label_smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {smoothing}")
