"""crossent's backends. Each is one module or folder offering the same functions, in the public
argument order, with arguments already checked (`_checks`) and the options in one frozen
`LossOptions`, and a `DESCRIPTOR` saying what `_dispatch` needs to know of it:

    cross_entropy(input, target, weight, opts)
    nll_loss(input, target, weight, opts)
    binary_cross_entropy(input, target, weight, opts)
    binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts)
    linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts)

Shared, not backends: `common` (dtypes, sums, reductions), `rows` (the row math), `autograd` (the
hand-over of gradients computed in forward), `loops` (the fused algorithms over row kernels).
See docs/ARCHITECTURE.md for the contract in full and what adding a backend touches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# The loss families whose size thresholds a descriptor gives (elements of the input; of the
# logits N x V for "linear").
FAMILIES = ("cross_entropy", "binary", "linear")


def never(*_) -> bool:
    return False


@dataclass(frozen=True)
class Descriptor:
    """What `_dispatch` reads of a backend.

    runs_on(device)        whether it can run on tensors of ``device`` when forced
    picked_on(device)      whether the rule picks it for the fused algorithms on ``device``
                           unforced (fused backends; the first in `_dispatch.FUSED_ORDER` wins)
    torch_below(family, needs_grad, device)
                           inputs of at most this many elements run torch's own kernel instead,
                           where torch has the options (its measured crossover on that device)
    kernels                its row kernels (fused backends), else None
    compiled_linear        the linear loss as one custom op, for torch.compile (fused backends)
    compiled_cross_entropy cross-entropy as one custom op, for torch.compile, or None (then the
                           composite formulas are traced)
    compiled_binary        the binary losses as custom ops, for torch.compile: (input, target,
                           weight, pos_weight, opts, *, logits) -> loss; or None (composite)
    """

    runs_on: Callable[[torch.device], bool]
    picked_on: Callable[[torch.device], bool] = never
    torch_below: Callable[[str, bool, torch.device], int] = lambda family, grad, device: 0
    kernels: object | None = None
    compiled_linear: Callable | None = None
    compiled_cross_entropy: Callable | None = None
    compiled_binary: Callable | None = None
