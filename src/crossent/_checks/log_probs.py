"""Checks of log_probs, linear_log_probs and vocab_parallel_linear_log_probs: logits (*, C) or a
linear layer's input (*, D) and weight (V, D), class-index targets (*), and their options."""

from __future__ import annotations

import dataclasses

import torch

from . import targets
from ._common import (
    InvalidArgument,
    InvalidArgumentType,
    _floating,
    _same_device,
    _shape,
    _tensor,
    count,
    flag,
    positive,
)
from .linear import head_operands
from .losses import loss_options


def options(fn: str, *, ignore_index, temperature, softcap, return_entropy, chunk_size=None):
    """(LossOptions with ignore_index, softcap, temperature and chunk_size, return_entropy)."""
    temperature = positive(fn, "temperature", temperature)
    flag(fn, "return_entropy", return_entropy)
    chunk_size = count(fn, "chunk_size", chunk_size, what=" (tokens per chunk)")
    opts = loss_options(fn, ignore_index=ignore_index, reduction_="none", softcap=softcap)
    return dataclasses.replace(opts, temperature=temperature, chunk_size=chunk_size), return_entropy


def _batched(fn: str, name: str, t: object, what: str) -> torch.Tensor:
    t = _tensor(fn, name, t)
    _floating(fn, name, t)
    if t.dim() < 1:
        raise InvalidArgument(f"{fn}: {name} must have shape (*, {what}), got a 0-d tensor")
    return t


def class_targets(fn: str, target: object, batch: tuple, num_classes: int, ignore_index: int,
                  input: torch.Tensor, *, context: str) -> torch.Tensor:
    """Class indices of shape ``batch`` (int64, or uint8 widened), each in [0, num_classes) or
    ignore_index, on the input's device."""
    target = _tensor(fn, "target", target)
    _same_device(fn, "target", target, input)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InvalidArgumentType(
            f"{fn}: target must hold class indices (int64) of shape {batch}, got {target.dtype} of "
            f"shape {_shape(target)}"
        )
    return targets.class_indices(
        fn, target, expected=batch, num_classes=num_classes, ignore_index=ignore_index,
        k_dim=False, probabilities="", context=context,
    )


def logits(fn: str, input: object, target: object, ignore_index: int):
    """(input, int64 target) of log_probs: logits (*, C), C >= 1, and class indices (*)."""
    input = _batched(fn, "input", input, "C")
    if input.shape[-1] == 0 and input.shape[:-1].numel() > 0:
        raise InvalidArgument(f"{fn}: input has no classes (shape {tuple(input.shape)}): there is no "
                              f"log-probability to take")
    batch = tuple(input.shape[:-1])
    target = class_targets(fn, target, batch, input.shape[-1], ignore_index, input,
                           context=f"(input.shape[:-1]) for input of shape {tuple(input.shape)}")
    return input, target


def linear(fn: str, input: object, linear_weight: object, linear_bias: object, target: object,
           ignore_index: int, *, num_classes: int | None = None):
    """(input, int64 target) of linear_log_probs: input (*, D), linear_weight (V, D), linear_bias
    (V,), one dtype and device; target (*) in [0, num_classes) (default V) or ignore_index.
    ``num_classes`` may be a callable of nothing, called once the operands are checked (the
    vocab-parallel call learns the global C from the ranks' shapes)."""
    input = _batched(fn, "input", input, "in_features")
    linear_weight = _tensor(fn, "linear_weight", linear_weight)
    d = input.shape[-1]
    if linear_weight.dim() != 2 or linear_weight.shape[1] != d:
        raise InvalidArgument(
            f"{fn}: linear_weight must have shape (V, in_features) with in_features = "
            f"input.shape[-1] = {d}, got {tuple(linear_weight.shape)}"
        )
    head_operands(fn, input, linear_weight, linear_bias)
    classes = linear_weight.shape[0] if num_classes is None else num_classes
    classes = classes() if callable(classes) else classes
    batch = tuple(input.shape[:-1])
    if classes == 0 and batch and torch.Size(batch).numel() > 0:
        raise InvalidArgument(f"{fn}: linear_weight has no rows (V = 0): there is no log-probability to take")
    target = class_targets(fn, target, batch, classes, ignore_index, input,
                           context=f"(input.shape[:-1]) for input of shape {tuple(input.shape)}")
    return input, target

