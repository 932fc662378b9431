"""crossent: exact, fast, memory-lean cross-entropy for PyTorch.

A drop-in for torch's cross-entropy family (same signatures, same numbers and gradients) with
fused, chunked kernels of its own. See README.md for the API table and benchmarks.

The public names are re-exported lazily (PEP 562), so `import crossent.cli` (the `crossent`
command's `--help`) does not pay for `import torch`; the first use of any name below imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Backend": "._dispatch",
    "use_backend": "._dispatch",
    "check_values": "._checks",
    "empty_cache": ".backends._memory",
    "binary_cross_entropy": ".functional",
    "binary_cross_entropy_with_logits": ".functional",
    "cross_entropy": ".functional",
    "linear_cross_entropy": ".functional",
    "linear_log_probs": ".functional",
    "log_probs": ".functional",
    "linear_distillation_loss": "._distillation",
    "linear_topk_distillation_loss": "._distillation",
    "nll_loss": ".functional",
}
_SUBMODULES = {"nn", "functional", "reference", "integrations", "distributed"}

__all__ = [
    "Backend",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "check_values",
    "cross_entropy",
    "empty_cache",
    "linear_cross_entropy",
    "linear_log_probs",
    "log_probs",
    "linear_distillation_loss",
    "linear_topk_distillation_loss",
    "nll_loss",
    "nn",
    "use_backend",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'crossent' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


if TYPE_CHECKING:  # static analysers see the real names
    from . import nn
    from ._checks import check_values
    from ._dispatch import Backend, use_backend
    from ._distillation import linear_distillation_loss, linear_topk_distillation_loss
    from .backends._memory import empty_cache
    from .functional import (
        binary_cross_entropy,
        binary_cross_entropy_with_logits,
        cross_entropy,
        linear_cross_entropy,
        linear_log_probs,
        log_probs,
        nll_loss,
    )
