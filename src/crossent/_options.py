"""The options of a loss call, as one frozen value passed from the public API down to a backend.

A new option is added here once; `functional` fills it after resolving legacy arguments and
checking values (`_checks`), `_dispatch` reads it to choose a backend, and every backend reads it.
Tensors (class weights, pos_weight, a linear bias) travel beside it as arguments because they may
need gradients and device moves.
"""

from __future__ import annotations

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
