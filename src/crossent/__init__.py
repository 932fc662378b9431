"""crossent: exact, fast, memory-lean cross-entropy for PyTorch.

A drop-in for torch's cross-entropy family (same signatures, same numbers and gradients) with
fused, chunked kernels of its own. See README.md for the API table and benchmarks.
"""

from . import nn
from ._checks import check_values
from ._dispatch import Backend, use_backend
from .functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
    nll_loss,
)

__all__ = [
    "Backend",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "check_values",
    "cross_entropy",
    "linear_cross_entropy",
    "nll_loss",
    "nn",
    "use_backend",
]
__version__ = "0.1.0"
