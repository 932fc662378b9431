"""TRL (>= 1.15): the fused LM head its trainers call, computed by crossent.

TRL's ``SFTTrainer`` and ``DPOTrainer`` do not use the model's loss: at construction they wrap the
model's forward with ``trl.trainer.utils.add_fused_lm_head``, and each step calls
``model(..., labels=labels, fused_lm_head=True)``, which runs the backbone and TRL's own chunked
kernel and returns a ``FusedCausalLMOutput`` (per-token ``log_probs``, ``entropy``, ``is_top1``,
... and ``label_mask``). The trainer then makes the loss of ``log_probs`` (SFT:
``-log_probs.sum() / num_items``; DPO: per-sequence sums into its sigmoid) and logs the metrics.

crossent's layer sits on top of TRL's wrapper and answers ``fused_lm_head=True`` calls with the
same output, computed as:

* ``log_probs = -linear_cross_entropy(h[:, :-1], W, labels[:, 1:], reduction="none")`` -- crossent's
  fused loss per token (zero where the label is -100), so any use of it, SFT's sum or DPO's
  per-sequence sums, gets crossent's exact gradient (8 N D V FLOPs: 'none' recomputes the logits
  in backward); h are the hidden states the model's own forward gives its head (``_forward.capture``:
  VLMs, PEFT and logit scales included);
* the requested statistics (entropy, is_top1, mean_logits, log_sum_sq_probs) from ``_stats``
  inside the same head call, without gradient, as TRL's metrics use them;
* ``loss`` and ``aux_loss`` as TRL's wrapper defines them.

TRL's wrapper parameters are read from its closure (temperature, ``cast_lm_head_to_fp32``, the
requested outputs): a TRL whose wrapper differs is refused with the supported range.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..._checks import integrations as _checks
from . import _forward, _layers, _stats, _trl_distill, _trl_rl
from ._common import IGNORE_INDEX

MIN_VERSION = (1, 15)  # trl.trainer.utils.add_fused_lm_head first appears in TRL 1.15.0
# The TRL releases the integration tests ran on (every trainer of TRAINERS and _trl_rl.TRAINERS; the
# README's table, kept equal by test_hf_readme): named in the refusal of an older TRL.
TESTED = ("1.15.0", "1.16.0")
TRAINERS = ("SFTTrainer", "DPOTrainer")  # whose use of the fused outputs was checked (see below)
_NAME = "_fused_forward"  # add_fused_lm_head.<locals>._fused_forward in trl/trainer/utils.py
_CLOSURE = ("temperature", "cast_lm_head_to_fp32", "outputs")


@dataclasses.dataclass(frozen=True)
class FusedHead:
    outputs: tuple[str, ...]  # the per-token fields the trainer asked TRL for
    output_type: type  # trl.trainer.utils.FusedCausalLMOutput
    temperature: float = 1.0  # the wrapper's (GRPO's and RLOO's sampling temperature)
    fp32_head: bool = False  # its cast_lm_head_to_fp32
    rl: bool = False  # a model of GRPO/RLOO/KTO: its calls are answered by _trl_rl


def version() -> tuple[int, ...] | None:
    trl = sys.modules.get("trl")
    if trl is None:
        return None
    parts = []
    for piece in str(getattr(trl, "__version__", "0")).split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def is_trl_trainer(obj: object) -> bool:
    return any(c.__module__.split(".")[0] == "trl" for c in type(obj).__mro__)


def is_fused_forward(forward: Any) -> bool:
    # functools.wraps gave TRL's wrapper the model's own name and module: its code object tells.
    code = getattr(getattr(forward, "__func__", None), "__code__", None)
    if code is None or code.co_name != _NAME:
        return False
    path = code.co_filename.replace("\\", "/")
    return path.endswith("/trl/trainer/utils.py")


def fused_head(fn: str, model: nn.Module, forward: Any) -> FusedHead:
    """What TRL's wrapper (forward, bound) was built with; refuses what crossent cannot match."""
    func = forward.__func__
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or ()))
    utils = sys.modules.get("trl.trainer.utils")
    output_type = getattr(utils, "FusedCausalLMOutput", None)
    if any(name not in cells for name in _CLOSURE) or output_type is None:
        _checks.trl_unsupported(fn, version(), MIN_VERSION, "its fused LM head is not the one crossent knows",
                                TESTED)
    temperature = cells["temperature"].cell_contents
    outputs = tuple(cells["outputs"].cell_contents)
    rl = _trl_rl.fused_head(fn, model, FusedHead(outputs, output_type), temperature,
                            cells["cast_lm_head_to_fp32"].cell_contents)
    if rl is not None:
        return rl
    if temperature != 1.0:
        _checks.trl_option_unsupported(fn, model, f"temperature={temperature}")
    if cells["cast_lm_head_to_fp32"].cell_contents:
        _checks.trl_option_unsupported(fn, model, "cast_lm_head_to_fp32=True")
    return FusedHead(outputs, output_type)


def check_trainer(fn: str, trainer: Any) -> list[nn.Module]:
    """The models a TRL trainer runs through its fused LM head (the policy, a reference model)."""
    got = version()
    if got is None or got[:2] < MIN_VERSION:
        _checks.trl_unsupported(fn, got, MIN_VERSION, "it has no fused LM head API", TESTED)
    if _trl_rl.trainer_name(trainer) is not None:
        return _trl_rl.check_trainer(fn, trainer)
    name = next((c.__name__ for c in type(trainer).__mro__ if c.__name__ in TRAINERS), None)
    if any(c.__name__ == "GKDTrainer" for c in type(trainer).__mro__):  # an SFTTrainer whose loss is
        # a divergence of both models' full logits: patching its fused LM head would change nothing
        _checks.trl_option_unsupported(fn, trainer, "GKD's generalized JSD on the full logits (use TRL's "
                                       "DistillationTrainer, which crossent patches)")
    if name is None:
        _checks.trl_trainer_unsupported(fn, trainer, TRAINERS + _trl_rl.TRAINERS + _trl_distill.TRAINERS)
    # Where SFTTrainer computes its loss from the full logits instead (the fused outputs then only
    # feed the metrics), crossent would not compute the loss: say so instead of a silent no-op.
    if getattr(trainer, "compute_loss_func", None) is not None:
        _checks.trl_option_unsupported(fn, trainer, "compute_loss_func (TRL computes it on the full logits)")
    if name == "SFTTrainer" and getattr(trainer.args, "label_smoothing_factor", 0) > 0:
        _checks.trl_option_unsupported(fn, trainer, "label_smoothing_factor > 0 (TRL smooths the full logits)")
    return trainer_models(trainer)


def trainer_models(trainer: Any) -> list[nn.Module]:
    models = [trainer.model]
    if getattr(trainer, "ref_model", None) is not None:
        models.append(trainer.ref_model)
    return models


@dataclasses.dataclass
class FusedCall:
    """One ``fused_lm_head=True`` call after the backbone ran: the hidden states the head sees
    (B, T', D), the shifted targets and their mask (B, T'), and what TRL's output needs besides."""

    hidden: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    module: nn.Module  # the head module (or a wrapper of it) the loss runs inside
    out: Any  # the model's own output (its aux_loss)
    router_logits: bool
    num_items_in_batch: Any
    text_config: Any


def fused_call(model: nn.Module, state: _forward.PatchState, args: tuple, kwargs: dict) -> FusedCall | None:
    """The backbone run as TRL's wrapper runs it (None: not a call crossent answers)."""
    arguments = _forward.by_name(state, args, kwargs)
    if arguments is None:
        return None
    arguments.pop("fused_lm_head")
    labels = arguments.pop("labels", None)
    shift_labels = arguments.pop("shift_labels", None)
    num_items_in_batch = arguments.pop("num_items_in_batch", None)
    _checks.trl_labels(model, labels, shift_labels)
    arguments["use_cache"] = False
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):  # as TRL: the MoE aux loss
        arguments.setdefault("output_router_logits", True)

    hidden, out, module = _forward.capture(model, state, _layers.below(model, state), arguments)  # (B, T, D)
    if shift_labels is None:  # position t predicts token t+1; TRL's per-token fields are (B, T-1)
        hidden, target = hidden[:, :-1], labels[:, 1:]
    else:
        target = shift_labels
    target = _checks.trl_targets(model, target.to(hidden.device), hidden)
    return FusedCall(hidden, target, target != IGNORE_INDEX, module, out,
                     bool(arguments.get("output_router_logits")), num_items_in_batch, text_config)


def fused_output(trl: FusedHead, call: FusedCall, log_probs: torch.Tensor, fields: dict) -> Any:
    """TRL's FusedCausalLMOutput: its loss (-sum log_probs / num_items, + the MoE aux loss)."""
    mask = call.mask
    den = mask.sum().clamp(min=1) if call.num_items_in_batch is None else call.num_items_in_batch
    loss = -log_probs.sum() / den
    out = call.out
    aux = out.get("aux_loss") if isinstance(out, ModelOutput) and call.router_logits else None
    if aux is not None:
        loss = loss + getattr(call.text_config, "router_aux_loss_coef", 0.0) * aux.to(loss.device)
    return trl.output_type(loss=loss, log_probs=log_probs, label_mask=mask, aux_loss=aux, **fields)


def fused_forward(model: nn.Module, state: _forward.PatchState, args: tuple, kwargs: dict) -> Any:
    """``model(..., labels=..., fused_lm_head=True)`` as TRL's wrapper answers it, by crossent."""
    trl: FusedHead = state.trl
    call = fused_call(model, state, args, kwargs)
    if call is None:  # TRL's wrapper: without fused_lm_head, the model's forward
        return _layers.below(model, state)(*args, **kwargs)
    if trl.rl:
        return fused_output(trl, call, *_trl_rl.per_token(model, state, call))
    hidden, target, mask = call.hidden, call.target, call.mask

    wanted = tuple(n for n in _stats.NAMES if n in trl.outputs)
    stats: dict[str, torch.Tensor] = {}

    def after(x, weight, bias):  # inside the head's call: the weight as the loss read it
        flat = target.reshape(-1)
        stats.update(_stats.per_token(x.detach(), weight.detach(),
                                      None if bias is None else bias.detach(), flat, wanted,
                                      scale=1.0, softcap=state.softcap,  # x, bias: already scaled
                                      chunk_size=state.chunk_size))

    losses = _forward.head_loss(model, state, call.module, hidden, target, reduction="none",
                                after=after)  # (B*T',)
    log_probs = -losses.reshape(mask.shape)  # crossent's 'none' is 0 on ignored positions
    fields = {n: stats[n].view(mask.shape).masked_fill(~mask, 0) for n in wanted}
    return fused_output(trl, call, log_probs, fields)


def bypass_message(model: nn.Module) -> str:
    outer = vars(model).get("forward")
    by = "TRL's fused LM head" if is_fused_forward(outer) else getattr(
        getattr(outer, "__func__", outer), "__qualname__", type(outer).__name__)
    return _checks.bypassed_message(model, by)

