"""Checks of linear_cross_entropy and LinearCrossEntropyLoss (torch 2.13's semantics)."""

from __future__ import annotations

import torch

from .. import _torch_version
from . import targets
from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    _floating,
    _tensor,
    count,
    product_operands,
    torch_int,
)
from ._common import label_smoothing as _label_smoothing

# linear_cross_entropy (torch 2.13's semantics): input (N, D) or (D,), linear_weight (C, D) or
# (C, d1..dk, D), linear_bias (C, d1..dk), target (N, d1..dk) / () or probabilities shaped like
# the logits (N, C, d1..dk) / (C,).


def linear_operands(fn: str, input: object, linear_weight: object, linear_bias: object) -> None:
    """The operands of the linear layer: shapes that multiply, one dtype, one device."""
    input = _tensor(fn, "input", input)
    _floating(fn, "input", input)
    if input.dim() not in (1, 2):
        raise InvalidArgument(
            f"{fn}: input must have shape (in_features,) or (N, in_features), as in torch, got "
            f"shape {tuple(input.shape)}; flatten the leading dimensions: "
            f"input.reshape(-1, {input.shape[-1] if input.dim() else 'D'}) and target.reshape(-1)"
        )
    linear_weight = _tensor(fn, "linear_weight", linear_weight)
    if linear_weight.dim() < 2 or linear_weight.shape[-1] != input.shape[-1]:
        raise InvalidArgument(
            f"{fn}: linear_weight must have shape (C, in_features) or (C, d1, ..., dk, "
            f"in_features) with in_features = input.shape[-1] = {input.shape[-1]}, got "
            f"linear_weight of shape {tuple(linear_weight.shape)} for input of shape "
            f"{tuple(input.shape)}"
        )
    out_features = tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() != 2:
        raise InvalidArgument(
            f"{fn}: K-dimensional loss defined by linear_weight of shape "
            f"{tuple(linear_weight.shape)} requires batched input (N, {input.shape[-1]}), got "
            f"shape {tuple(input.shape)}"
        )
    head_operands(fn, input, linear_weight, linear_bias)


def head_operands(fn: str, input: torch.Tensor, linear_weight: torch.Tensor, linear_bias: object) -> None:
    """The head's weight (checked) and bias beside input: the bias one entry per row of the weight
    (its shape without in_features), both on input's device and in input's dtype."""
    operands = [("linear_weight", linear_weight)]
    if linear_bias is not None:
        linear_bias = _tensor(fn, "linear_bias", linear_bias)
        expected = tuple(linear_weight.shape[:-1])
        if tuple(linear_bias.shape) != expected:
            raise InvalidArgument(
                f"{fn}: linear_bias must have shape {expected}, one entry per row of "
                f"linear_weight, got {tuple(linear_bias.shape)}"
            )
        operands.append(("linear_bias", linear_bias))
    product_operands(fn, operands, input)


def linear_targets(
    fn: str, input: torch.Tensor, linear_weight: torch.Tensor, target: object, ignore_index: int | None
) -> tuple[torch.Tensor, bool, int]:
    """torch's rule: class probabilities exactly when target.shape equals the logits' shape
    (*input.shape[:-1], C, d1..dk); otherwise class indices of shape (*input.shape[:-1], d1..dk).

    Returns (target, soft, ignore_index): int64 indices (value-checked as for cross_entropy) or the
    probabilities, and ignore_index with None mapped to -100.
    """
    resolved = -100 if ignore_index is None else torch_int(fn, "ignore_index", ignore_index)
    target, soft = targets.linear_targets(
        fn, target, batch=tuple(input.shape[:-1]), classes=linear_weight.shape[0],
        out=tuple(linear_weight.shape[1:-1]), num_classes=linear_weight.shape[0],
        ignore_index=resolved, ignore_given=ignore_index is not None, device=input.device,
        context=f"for input of shape {tuple(input.shape)} and linear_weight of shape "
                f"{tuple(linear_weight.shape)}",
    )
    return target, soft, -100 if soft else resolved


def linear_chunking(
    fn: str, opts_reduction: str, normalizer: float | None, chunk_size: object, options: object,
    num_tokens: int, in_features: int, num_classes: int,
) -> tuple[int | None, bool]:
    """(rows per chunk or None for crossent's rule, allow_retain_graph) from crossent's
    ``chunk_size`` and torch's ``options`` (a LinearCrossEntropyOptions, or any object with its
    fields, checked by the installed torch's rules). normalizer needs reduction='mean'."""
    if normalizer is not None and opts_reduction != "mean":
        raise InvalidArgument(
            f"{fn}: normalizer={normalizer} replaces the denominator of reduction='mean', "
            f"got reduction={opts_reduction!r}; use reduction='mean' (or divide the 'sum' yourself)"
        )
    chunk_size = count(fn, "chunk_size", chunk_size, what=" (rows per chunk)")
    if options is None:
        return chunk_size, False
    # (validated as the installed torch validates its own options class: _torch_version)
    options = _torch_version.linear_options(fn, options, InvalidArgument, InvalidArgumentType)
    rows = options.batch_chunk_size
    method = options.chunking_method
    if method is None or method == "auto":
        if rows is not None:
            rows = min(rows, num_tokens)
        elif method is None:
            rows = num_tokens  # torch: no method and no size means one chunk
        # ("auto" without a size: None, crossent's measured rule)
    else:  # "aspect_ratio[:k]", torch's formula: next_pow2(ceil(N / ceil(C / D))) // k
        factor = int(method.split(":", 1)[1]) if ":" in method else 1
        target = -(-num_tokens // -(-num_classes // max(in_features, 1)))
        computed = min((1 << (target - 1).bit_length()) // factor, num_tokens)
        if rows is not None and rows != computed:
            raise InvalidArgument(
                f"{fn}: options.batch_chunk_size={rows} and chunking_method={method!r} give "
                f"different chunk sizes ({rows} vs {computed}); pass only one"
            )
        rows = computed
    if rows is not None:
        rows = max(1, rows)
    if chunk_size is not None and rows is not None and chunk_size != rows:
        raise InvalidArgument(
            f"{fn}: chunk_size={chunk_size} and options (which give {rows} rows per chunk) "
            f"disagree; pass only one"
        )
    return chunk_size if chunk_size is not None else rows, bool(options.allow_retain_graph)


def linear_options_for_call(fn: str, options: object, input: torch.Tensor, given_target: torch.Tensor,
                            reduction: str, label_smoothing: float, k_dim: bool) -> None:
    """What torch's chunked path refuses at call time (options already checked by
    ``linear_chunking``), for the calls the installed torch sends there (``_torch_version``)."""
    if options is not None and _torch_version.takes_torchs_chunked_path(
            input, given_target, reduction, label_smoothing, k_dim):
        _torch_version.check_acc_dtype(fn, options, input, InvalidArgument)


def linear_no_fused_gradient(fn: str, **tensors: torch.Tensor | None) -> None:
    """The fused path differentiates w.r.t. input, weight and bias only; refuse to drop a gradient."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise InvalidArgument(
                f"{fn}: {name} requires grad, but the fused path gives gradients only for input, "
                f"weight and bias; pass {name}.detach(), or run under "
                f"crossent.use_backend('reference') (it materialises the logits)"
            )


def linear_module(fn: str, in_features, num_classes, out_features, weight, label_smoothing) -> None:
    """LinearCrossEntropyLoss's constructor arguments (torch checks the class weight and the
    smoothing there too; the rest are checked at every call)."""
    for name, value in (("in_features", in_features), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{fn}: {name} must be a positive int, got {value!r}")
    if not isinstance(out_features, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in out_features
    ):
        raise InvalidArgument(f"{fn}: out_features must be a tuple of positive ints, got {out_features!r}")
    if weight is not None:
        weight = _tensor(fn, "weight", weight)
        if tuple(weight.shape) != (num_classes,):
            raise InvalidArgument(
                f"{fn}: weight must be a 1-D tensor with one entry per class ({num_classes}), "
                f"got shape {tuple(weight.shape)}"
            )
    _label_smoothing(fn, label_smoothing)
