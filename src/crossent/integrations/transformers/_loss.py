"""The plain drop-ins: ``causal_lm_loss`` (transformers' ``ForCausalLMLoss``) and
``compute_loss_func`` (the same loss for ``Trainer(compute_loss_func=...)``).

The model still builds its (B, T, V) logits; the loss reads them in place, without the float32
copy transformers makes of 16-bit logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ... import functional as _functional
from ..._checks import integrations as _checks
from ._common import IGNORE_INDEX, loss_dtype, normalizer, shifted_labels


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss``, computed by ``crossent.cross_entropy``.

    Same signature as ``transformers.loss.loss_utils.ForCausalLMLoss`` (``vocab_size`` may be
    omitted: it is then ``logits.shape[-1]``), so ``model.loss_function = causal_lm_loss`` works
    for every causal LM (in transformers versions whose ``loss_function`` property has a setter;
    4.46 has none: use ``compute_loss_func`` or ``patch`` there). Equivalent to::

        shift_labels = pad(labels, (0, 1), value=ignore_index)[..., 1:]   # unless given
        loss = cross_entropy(logits.float().view(-1, V), shift_labels.view(-1),
                             ignore_index=ignore_index,
                             reduction="mean" if num_items_in_batch is None else "sum")
        if num_items_in_batch is not None: loss = loss / num_items_in_batch

    but without ``logits.float()``: 16-bit logits are read in place (crossent computes them in
    float32 chunk by chunk, ``dtype=torch.float32``), and the loss is returned in float32, not
    rounded to 16 bits, as transformers returns it.
    Other keyword arguments (the model's forward passes its own through) are ignored, as
    transformers ignores them.
    """
    fn = "causal_lm_loss"
    logits = _checks.logits_tensor(fn, logits)
    vocab = _checks.vocab_size(fn, vocab_size, logits)
    _checks.labels_given(fn, labels, shift_labels)
    if shift_labels is None:
        shift_labels = shifted_labels(labels, ignore_index)
    target = shift_labels.reshape(-1).to(logits.device)  # (B*T,)
    flat = logits.reshape(-1, vocab)  # (B*T, V): a view for contiguous logits
    _checks.token_counts(fn, logits, shift_labels, flat.shape[0], target.shape[0])
    norm = normalizer(fn, num_items_in_batch, logits.device)
    dtype = loss_dtype(logits)
    if norm is None:
        return _functional.cross_entropy(flat, target, ignore_index=ignore_index, dtype=dtype)
    loss = _functional.cross_entropy(
        flat, target, ignore_index=ignore_index, reduction="sum", dtype=dtype
    )
    return loss / norm


def compute_loss_func(
    outputs: Any, labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """``causal_lm_loss`` with the signature of ``Trainer(compute_loss_func=...)``.

    The Trainer takes ``labels`` out of the inputs before the forward (so the model returns logits
    and no loss) and calls this with the model's outputs.
    """
    if isinstance(outputs, Mapping):  # .get: a ModelOutput has no "logits" key when they are None
        logits = outputs.get("logits")
    else:
        logits = getattr(outputs, "logits", None)
    logits = _checks.outputs_logits("compute_loss_func", outputs, logits)
    return causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
