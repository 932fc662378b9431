"""The options of a loss call, as one frozen value passed from the public API down to a backend.

A new option is added here once; `functional` fills it after resolving legacy arguments and
checking values (`_checks`), `_dispatch` reads it to choose a backend, and every backend reads it.
Tensors (class weights, pos_weight, a linear bias) travel beside it as arguments because they may
need gradients and device moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

Reduction = Literal["none", "mean", "sum"]


class _Encoded:
    """`encode`/`decode` of a frozen options dataclass, for the custom ops of torch.compile (which
    take tensors, numbers and strings only). The names come from the dataclass's fields
    (`_encoded`), so a new option cannot be left out."""

    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def encode(self) -> str:
        """The options as one string: every field in order, each as its repr, a tensor normalizer
        as ``<tensor>`` (it travels beside the string). Dynamo folds it into a constant (json.dumps
        would break the graph)."""
        return ";".join([_token(getattr(self, name)) for name in self._FIELDS])

    @classmethod
    def decode(cls, text: str, normalizer: torch.Tensor | None = None):
        """The inverse of `encode` (``normalizer``: the tensor that travelled beside it)."""
        values = [_value(token, normalizer) for token in text.split(";")]
        return cls(**dict(zip(cls._FIELDS, values, strict=True)))


def _encoded(cls):
    """Class decorator, above @dataclass: record the fields' names, in order, for `_Encoded`."""
    cls._FIELDS = tuple(f.name for f in dataclasses.fields(cls))
    return cls


@_encoded
@dataclass(frozen=True)
class LossOptions(_Encoded):
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
    temperature      log_probs / linear_log_probs: the (softcapped) logits are divided by it
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
    temperature: float = 1.0


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


@_encoded
@dataclass(frozen=True)
class DistillationOptions(_Encoded):
    """Options of the distillation losses (`crossent.linear_distillation_loss`,
    `crossent.linear_topk_distillation_loss`), frozen, from the public API to a backend.

    beta             the generalized Jensen-Shannon divergence's mixture weight, TRL's convention:
                     0 forward KL(teacher || student), 1 reverse KL(student || teacher)
    temperature      both models' (capped) logits are divided by it before their softmaxes
                     (top-k: the student's; the teacher's log-probs come as given)
    softcap          the student's logits -> softcap * tanh(logits / softcap) before anything
    teacher_softcap  the same for the teacher's logits (dense loss)
    hard_weight      weight of the student's cross-entropy on the targets (at temperature 1)
    soft_weight      weight of the divergence
    tail             top-k: one bucket for the mass outside the k ids on both sides (else both
                     renormalised over the k ids)
    topk             the top-k loss (the teacher as (ids, log-probs)), else the dense one
    ignore_index, reduction, normalizer, chunk_size  as in LossOptions
    dtype            the loss's dtype: None, the student input's; float32 under autocast
    """

    beta: float = 0.5
    temperature: float = 1.0
    softcap: float | None = None
    teacher_softcap: float | None = None
    hard_weight: float = 0.0
    soft_weight: float = 1.0
    tail: bool = True
    topk: bool = False
    ignore_index: int = -100
    reduction: Reduction = "mean"
    normalizer: float | torch.Tensor | None = None
    chunk_size: int | None = None
    dtype: torch.dtype | None = None
