"""Hugging Face transformers: crossent's loss for causal language models, through public seams only.

Two ways in (extra ``crossent[hf]``, transformers>=4.46):

* ``causal_lm_loss`` -- a drop-in for transformers' ``ForCausalLMLoss``, set with the public hook
  ``model.loss_function = causal_lm_loss``; ``compute_loss_func`` is the same loss with the
  signature of ``Trainer(compute_loss_func=...)``. The model still builds its logits; the loss
  reads them without the float32 copy transformers makes of them.
* ``patch(obj)`` / ``unpatch(obj)`` / ``is_patched(obj)`` -- in training, with labels, the logits
  are never built: the decoder's last hidden states and the output embedding's weight and bias go
  straight into ``crossent.linear_cross_entropy``. One generic code path for every ``*ForCausalLM``
  and decoder-only VLM; no model's forward is copied. ``obj`` may be the model, a PEFT or compiled
  wrapper of it, a ``Trainer``, or TRL's ``SFTTrainer`` / ``DPOTrainer`` (TRL >= 1.15, optional).

Modules: ``_loss`` (the two drop-ins), ``_patch`` (the public calls; its docstring says how the
patch works and why FSDP's and ZeRO-3's parameter gathering keeps working), ``_contract`` (what
loss a model computes, learnt at patch time), ``_probe`` (running its forward on designed logits
for that, side-effect free), ``_layers`` (crossent's layer on the forward chain: composition with
other wrappers, unpatch, the bypass warning), ``_forward`` (the patched forward: head capture,
probe, loss), ``_head`` (plain and LoRA heads, where the head hangs), ``_trl`` (TRL's fused LM
head answered by crossent), ``_stats`` (TRL's per-token metrics without logits), ``_common``
(label shifting, the loss dtype, ``num_items_in_batch``). Their error messages live in
``crossent._checks.integrations`` and ``integrations_probe``. TRL and PEFT are never imported here: they are
recognised only when the caller has imported them.
"""

from __future__ import annotations

from ..._checks import integrations as _checks

try:  # first, so that a missing transformers fails here, at import, with the remedy
    import transformers.modeling_outputs  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    _checks.transformers_missing(exc)

from ._common import IGNORE_INDEX as IGNORE_INDEX  # noqa: E402  (as before the split)
from ._loss import causal_lm_loss, compute_loss_func  # noqa: E402
from ._patch import is_patched, patch, unpatch  # noqa: E402

__all__ = ["causal_lm_loss", "compute_loss_func", "is_patched", "patch", "unpatch"]
