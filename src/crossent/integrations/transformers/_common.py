"""What the plain loss and the patched forward share: shifted labels, loss dtype, normaliser."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..._checks import integrations as _checks

IGNORE_INDEX = -100  # transformers' default in ForCausalLMLoss


def shifted_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # (B, T) -> (B, T): position t is trained to predict token t+1; the last predicts nothing.
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def loss_dtype(t: torch.Tensor) -> torch.dtype | None:
    # transformers returns a float32 loss for 16-bit logits (it computes on logits.float());
    # crossent's dtype=torch.float32 returns that loss unrounded, without the float32 copy.
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None


def normalizer(fn: str, num_items_in_batch: Any, device: torch.device):
    """num_items_in_batch (checked) on the loss's device: the denominator of the summed loss."""
    norm = _checks.num_items_in_batch(fn, num_items_in_batch)
    return norm.to(device) if torch.is_tensor(norm) else norm
