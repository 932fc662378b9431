"""The options of a loss call, as one frozen value passed from the public API down to a backend.

A new option is added here once; `functional` fills it after resolving legacy arguments and
checking values (`_checks`), and every backend reads it. Tensors (class weights, pos_weight)
travel beside it as arguments because they may need gradients and device moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reduction = Literal["none", "mean", "sum"]


@dataclass(frozen=True)
class LossOptions:
    """Options of the cross-entropy family.

    ignore_index     targets equal to it contribute neither loss nor gradient (class-index targets)
    reduction        'none' per-sample losses, 'sum', or 'mean' (see the docs for weighted mean)
    label_smoothing  eps in [0, 1]: target distribution (1 - eps) * onehot + eps / C
    z_loss           adds z_loss * logsumexp(logits)**2 to every counted sample's loss (PaLM)
    softcap          logits -> softcap * tanh(logits / softcap) before everything (Gemma 2)
    normalizer       'mean' divides the summed loss by this number instead of the default count
    inplace_backward write the gradient into the input logits' storage (the input is destroyed)
    """

    ignore_index: int = -100
    reduction: Reduction = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    normalizer: float | None = None
    inplace_backward: bool = False
