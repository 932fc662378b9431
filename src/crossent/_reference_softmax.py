"""The log-softmax of the float64 references (crossent.reference and its distillation part), in
its own module so that both import it without importing each other. Elementary ops only (the
same ban as crossent.reference: tests/test_reference_distillation.py)."""

from __future__ import annotations

import torch
from torch import Tensor


def log_p_and_lse(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(log p, lse) with lse = log sum_c exp(x_c) = m + log sum_c exp(x_c - m), m = max_c x_c.

    Shifting by m keeps exp from overflowing. lse does not depend on m, and neither does its
    gradient (the m terms cancel: 1 - sum_c p_c = 0), so m is detached rather than differentiated.
    """
    m = x.amax(dim, keepdim=True).detach()
    lse = m + torch.log(torch.exp(x - m).sum(dim, keepdim=True))
    return x - lse, lse.squeeze(dim)
