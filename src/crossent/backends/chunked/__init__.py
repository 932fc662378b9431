"""The fused backend: crossent's chunk kernels in plain PyTorch (loss and gradient in one pass,
gradient-sized memory only, deterministic). Modules: `kernel` (the chunk kernel every loss here
shares), `cross_entropy` (CE, NLL), `binary` (BCE, BCE with logits), `linear` (linear CE)."""

from .binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .cross_entropy import cross_entropy, nll_loss
from .linear import linear_cross_entropy

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "nll_loss",
]
