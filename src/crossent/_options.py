"""The options of a loss call, as one frozen value passed from the public API down to a backend.

A new option is added here once; `functional` fills it after resolving legacy arguments and
checking values (`_checks`), `_dispatch` reads it to choose a backend, and every backend reads it.
Tensors (class weights, pos_weight, a linear bias) travel beside it as arguments because they may
need gradients and device moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

Reduction = Literal["none", "mean", "sum"]


@dataclass(frozen=True)
class LossOptions:
    """Options of the cross-entropy family (each backend honours all of them, or is not chosen).

    ignore_index     targets equal to it contribute neither loss nor gradient (class-index targets)
    reduction        'none' per-sample losses, 'sum', or 'mean' (see the docs for weighted mean)
    label_smoothing  eps in [0, 1]: target distribution (1 - eps) * onehot + eps / C
    z_loss           adds z_loss * logsumexp(logits)**2 to every counted sample's loss (PaLM)
    softcap          logits -> softcap * tanh(logits / softcap) before everything (Gemma 2)
    normalizer       'mean' divides the summed loss by this number instead of the default count
    inplace_backward write the gradient into the input logits' storage (the input is destroyed)
    soft             the targets are class probabilities (torch's rule: a floating target shaped
                     like the logits), not class indices
    dtype            None: the loss in torch's dtype; torch.float32: the unrounded float32 loss of
                     a 16-bit input (checked: no other value reaches a backend)
    chunk_size       linear_cross_entropy: tokens per chunk, or None for the backend's own rule
    allow_retain_graph  linear_cross_entropy: keep the gradients computed in forward so that a
                     second backward through the same loss works (one gradient-sized copy)
    """

    ignore_index: int = -100
    reduction: Reduction = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    normalizer: float | torch.Tensor | None = None  # a 0-d tensor where its value is not read
    inplace_backward: bool = False
    soft: bool = False
    dtype: torch.dtype | None = None
    chunk_size: int | None = None
    allow_retain_graph: bool = False

    def encode(self) -> str:
        """The options as one string, for the custom ops of torch.compile (which take tensors,
        numbers and strings only): every field in order, each as its repr, a tensor normalizer as
        ``<tensor>`` (it travels beside the string). Built from the dataclass's fields, so a new
        option cannot be left out; Dynamo folds it into a constant (json.dumps would break the
        graph)."""
        return ";".join([_token(getattr(self, name)) for name in _FIELDS])

    @staticmethod
    def decode(text: str, normalizer: torch.Tensor | None = None) -> LossOptions:
        """The inverse of `encode` (``normalizer``: the tensor that travelled beside it)."""
        values = [_value(token, normalizer) for token in text.split(";")]
        return LossOptions(**dict(zip(_FIELDS, values, strict=True)))


_FIELDS = tuple(f.name for f in dataclasses.fields(LossOptions))
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _token(value) -> str:
    if isinstance(value, torch.Tensor):
        return "<tensor>"
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)


def _value(token: str, normalizer):
    if token == "<tensor>":
        return normalizer
    if token in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[token]
    if token in _DTYPES:
        return _DTYPES[token]
    if token.startswith("'"):
        return token[1:-1]
    return int(token) if token.lstrip("-").isdigit() else float(token)
