"""TRL's reinforcement-learning and preference trainers (GRPOTrainer, RLOOTrainer, KTOTrainer):
their fused-LM-head calls answered by ``crossent.linear_log_probs``.

Like ``SFTTrainer`` (``_trl``), these trainers wrap the model's forward with TRL's
``add_fused_lm_head`` at construction and call ``model(..., labels=labels, fused_lm_head=True)``
for the policy, the reference model and KTO's KL batch, reading ``outputs.log_probs`` and
``outputs.entropy`` (GRPO's entropy bonus differentiates the entropy; its
``top_entropy_quantile < 1`` masks tokens by it; KTO and RLOO log it). Unlike SFT's, their wrapper
carries a sampling temperature (GRPO, RLOO) and may run the head in float32
(``cast_lm_head_to_fp32``). crossent answers each such call with

    log_probs, entropy = linear_log_probs(x, W, t, linear_bias=b, temperature=T,
                                          softcap=softcap, return_entropy=True)

on the hidden states the model's own forward gives its head (``_forward.capture``: LoRA heads,
VLMs and logit scales included; x, b scaled by the logit scale), only at the positions whose
label is not -100 (the prompt and padding cost nothing), scattered back into the (B, T-1) zeros
TRL returns. Both outputs carry crossent's exact gradient, so every loss TRL builds from them
(every GRPO ``loss_type``, sequence-level importance sampling, the KL to a reference model, the
entropy bonus, entropy masking, KTO's losses) is the trainer's own. The other per-token fields
(``mean_logits``, ``is_top1``, ``log_sum_sq_probs``) come from ``_stats`` without gradient, as
TRL marks them; ``loss`` and ``aux_loss`` are TRL's definitions.

Refused at ``patch()``: a ``compute_loss_func`` (then the trainer computes its loss elsewhere),
and a temperature other than 1 together with ``log_sum_sq_probs`` or ``mean_logits`` (``_stats``
computes them at temperature 1; no TRL 1.16 trainer asks for that combination).

``patch(trainer)`` finds the models (``check_trainer``) before it reads each model's wrapper
(``_trl.fused_head``); the models of one of these trainers are ``claim``-ed in between, so that
their wrapper's temperature and float32 head are accepted (``fused_head``) and their calls come
here (``per_token``, called by ``_trl.fused_forward``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Any

import torch
from torch import nn

from ... import functional as _functional
from ..._checks import integrations as _checks
from . import _forward, _head, _stats
from ._common import IGNORE_INDEX

TRAINERS = ("GRPOTrainer", "RLOOTrainer", "KTOTrainer")
_CLAIMED: weakref.WeakSet = weakref.WeakSet()  # models of such a trainer, between the two checks


def trainer_name(trainer: Any) -> str | None:
    return next((c.__name__ for c in type(trainer).__mro__ if c.__name__ in TRAINERS), None)


def check_trainer(fn: str, trainer: Any) -> list[nn.Module]:
    """The models the trainer runs through TRL's fused LM head, claimed for `fused_head`."""
    if getattr(trainer, "compute_loss_func", None) is not None:
        _checks.trl_option_unsupported(fn, trainer, "compute_loss_func (the trainer's loss is not TRL's)")
    from ._patch import _unwrap  # (the models as patch will see them: under PEFT, the base model)

    models = [trainer.model]
    if getattr(trainer, "ref_model", None) is not None:
        models.append(trainer.ref_model)
    for model in models:
        _CLAIMED.add(_unwrap(model))
    return models


def fused_head(fn: str, model: nn.Module, head: Any, temperature: float, fp32_head: bool) -> Any | None:
    """``head`` (a _trl.FusedHead) for a claimed model, with its wrapper's temperature and
    float32 head; None for a model no RL trainer claimed."""
    if model not in _CLAIMED:
        return None
    _CLAIMED.discard(model)
    at_temperature_one = [n for n in ("log_sum_sq_probs", "mean_logits") if n in head.outputs]
    if temperature != 1.0 and at_temperature_one:
        _checks.trl_option_unsupported(fn, model, f"temperature={temperature} and the outputs {at_temperature_one}")
    return dataclasses.replace(head, temperature=float(temperature), fp32_head=bool(fp32_head), rl=True)


def per_token(model: nn.Module, state: _forward.PatchState, call) -> tuple[torch.Tensor, dict]:
    """(log_probs (B, T'), {the other fields TRL asked for}) of a `_trl.FusedCall`, 0 where the
    label is -100; only the counted positions go through the head."""
    mask = call.mask
    values = head_log_probs(model, state, call.module, call.hidden[mask], call.target[mask])  # {name: (n,)}
    # masked_scatter keeps the outputs connected to the model when no label counts (TRL's reason)
    fields = {name: v.new_zeros(mask.shape).masked_scatter(mask, v) for name, v in values.items()}
    return fields.pop("log_probs"), fields


def head_log_probs(model, state: _forward.PatchState, module: nn.Module, hidden, target) -> dict:
    """{log_probs, entropy (if TRL asked for it), the other fields asked for} of the counted
    positions hidden (n, D), target (n,), computed inside a call of the head module (its hooks:
    FSDP's gathering, PEFT's adapters)."""
    trl = state.trl
    head = _head.target(module, state.head)
    entropy = "entropy" in trl.outputs
    others = tuple(n for n in _stats.NAMES if n in trl.outputs and n != "entropy")
    stats: dict[str, torch.Tensor] = {}

    def fused(h: torch.Tensor) -> torch.Tensor:
        x, weight, bias = _head.operands(model, head, h)  # read now: after the gathering pre-hooks
        if state.scale != 1.0:  # scale * (x W^T + b) = (scale x) W^T + scale b
            x = x * state.scale
            bias = bias * state.scale if bias is not None else None
        out = _functional.linear_log_probs(
            x, weight, target, linear_bias=bias, temperature=trl.temperature, softcap=state.softcap,
            ignore_index=IGNORE_INDEX, return_entropy=entropy, chunk_size=state.chunk_size)
        if others:
            stats.update(_stats.per_token(x.detach(), weight.detach(), None if bias is None else bias.detach(),
                                          target, others, scale=1.0, softcap=state.softcap,
                                          chunk_size=state.chunk_size))
        return torch.stack(out) if entropy else out.unsqueeze(0)  # one tensor through the hooks

    if trl.fp32_head:  # TRL's cast_lm_head_to_fp32: float32 hidden states, autocast off
        hidden = hidden.float()
        context = torch.autocast(hidden.device.type, enabled=False)
    else:
        context = contextlib.nullcontext()
    with context:
        both = _head.call_inside(head, module, fused, hidden)
    result = {"log_probs": both[0]}
    if entropy:
        result["entropy"] = both[1]
    return {**result, **stats}
