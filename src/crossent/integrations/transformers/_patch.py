"""``patch`` / ``unpatch`` / ``is_patched``: the fused loss for every causal LM and VLM, the logits
never built; for a model, a PEFT model, a compiled model, a ``Trainer`` or a TRL trainer.

How ``patch`` works (and why it keeps distributed parameter gathering working)
------------------------------------------------------------------------------
At patch time, ``_contract`` learns what loss the model's own forward computes, by running it on
8 tokens with a stand-in head returning designed logits (``_probe``; the model is left as it was
found): labels shifted or as given, loss keyword arguments used or passed on, the MoE aux-loss
coefficient, the logit factors and softcap it applies. What it cannot reproduce is refused there.

The patched forward (``_forward``) calls the model's own, unchanged forward with ``labels=None``,
while the output head (``model.get_output_embeddings()``, wherever it hangs: ``lm_head``,
``cls.predictions.decoder``) is swapped, for the duration of that call only, for a
parameter-free module that records the hidden states it is given -- after the model's own
``logits_to_keep`` slicing -- and returns a tiny probe tensor. Whatever the model does to its
logits afterwards (Gemma 2's softcap, Cohere's scale) is applied to the probe, and the result is
checked against the contract once more at the first patched call (a backstop: a config changed
after patch raises instead of being silently dropped). Vision-language models go the same way:
their forward merges the image features into the text sequence, and the head sees the merged
hidden states.

The loss is then computed *inside a call of the real head module* (``_head``): ``model.lm_head``
is called with its ``forward`` temporarily replaced by the fused loss, which reads the weight and
bias at that moment. So every hook on the head runs around the fused loss exactly as it runs
around the ordinary ``F.linear``: FSDP's and DeepSpeed ZeRO-3's pre-forward hooks gather the
sharded weight before it is read, their post-forward hooks release it, and the backward hooks they
attach to the module's output attach to the loss, so the weight is gathered again before the
loss's backward reads it. The head is called once per step, as without crossent. Because
``patch`` stores only where the head hangs (its parent and name), wrapping the head after patching
(FSDP1 auto-wrap, PEFT's LoRA on ``lm_head``) is fine too.

Composition (``_layers``): the patch is one layer on the model's forward chain. Wrappers installed
later (accelerate's autocast, TRL's fused LM head) wrap it; ``unpatch`` removes only crossent's
layer (restored if outermost, a pass-through if wrapped since). TRL's trainers bypass the model's
loss: ``patch(trainer)`` puts crossent's layer on top of TRL's and answers its fused-LM-head calls
(``_trl``); a model patched before such a wrapper warns once, at its first training step, that
the wrapper computed the loss without crossent.

Training only: in eval mode, or without labels, the original forward runs untouched (logits and
loss as transformers computes them); without labels in training it warns once that the fused
loss did not run.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import transformers
from torch import nn

from ..._checks import integrations as _checks
from . import _contract, _forward, _head, _layers, _trl, _trl_distill


def _unwrap(obj: Any) -> Any:
    """The transformers model under PEFT's and torch.compile's wrappers."""
    while True:
        if type(obj).__name__ == "OptimizedModule" and isinstance(getattr(obj, "_orig_mod", None), nn.Module):
            obj = obj._orig_mod
        elif _head.is_peft_model(obj):
            _checks.peft_prompt_learning(obj)
            obj = obj.get_base_model()
        else:
            return obj


def _is_trainer(obj: Any) -> bool:
    # Only if transformers.trainer was imported (importing it costs seconds): else obj is none.
    module = sys.modules.get("transformers.trainer")
    return module is not None and isinstance(obj, module.Trainer)


def _models(fn: str, obj: Any) -> list[nn.Module]:
    """The transformers models a call of patch / unpatch / is_patched acts on."""
    if _is_trainer(obj):
        if _trl.is_trl_trainer(obj):
            models = _trl.check_trainer(fn, obj) if fn == "patch" else _trl.trainer_models(obj)
        else:
            if fn == "patch" and obj.compute_loss_func is not None:
                _checks.trainer_compute_loss_func(fn)  # the Trainer takes the labels out
            models = [obj.model]
        return [_unwrap(m) for m in models]
    return [_unwrap(obj)]


def is_patched(obj: Any) -> bool:
    """Whether crossent computes the training loss: on the model (under PEFT / torch.compile
    wrappers), or on every model a trainer runs. Not for an unpatched layer left inert under
    another wrapper, nor for a patched model that TRL's fused LM head wrapped afterwards (its
    training calls bypass crossent until the trainer is patched)."""
    if _distillation_trainer(obj):
        return _trl_distill.is_patched(obj)
    return all(_in_effect(m) for m in _models("is_patched", obj))


def _distillation_trainer(obj: Any) -> bool:
    return _is_trainer(obj) and _trl.is_trl_trainer(obj) and _trl_distill.trainer_name(obj) is not None


def _in_effect(model: nn.Module) -> bool:
    state = _layers.active(model)
    if state is None:
        return False
    return state.trl is not None or not _trl.is_fused_forward(vars(model).get("forward"))


def patch(obj: Any, *, chunk_size: int | None = None) -> Any:
    """Make training compute the loss with ``crossent.linear_cross_entropy``; returns ``obj``.

    obj: one of
      * a transformers causal LM (``*ForCausalLM``, ``GPT2LMHeadModel``, ...) or a decoder-only
        vision-language model (``*ForConditionalGeneration`` whose loss is transformers' causal-LM
        loss: Qwen2-VL, Qwen2.5-VL, Gemma 3, LLaVA, PaliGemma, Mllama, ...) whose output head is a
        plain ``nn.Linear`` (tied input embeddings included) or PEFT's LoRA ``Linear`` over one,
        and whose loss the probe can learn (see below);
      * such a model under PEFT (``PeftModel``: patched through its base model) or
        ``torch.compile`` (``OptimizedModule``: its original module);
      * a ``transformers.Trainer`` (its model; not with ``compute_loss_func``);
      * a TRL ``SFTTrainer`` or ``DPOTrainer`` (TRL >= 1.15), after it is built and before
        ``train()``: its model and reference model, whose fused-LM-head calls crossent then answers
        (the loss, TRL's ``log_probs`` and the metrics it logs: entropy, token accuracy).
      * a TRL ``GRPOTrainer``, ``RLOOTrainer`` or ``KTOTrainer`` (TRL >= 1.15) likewise: the
        per-token ``log_probs`` and ``entropy`` of its policy, reference model (and KTO's KL batch),
        language or vision-language, by ``crossent.linear_log_probs`` with both gradients.
      * a TRL ``DistillationTrainer`` (TRL >= 1.16, a local teacher): its generalized-JSD loss by
        ``crossent.linear_distillation_loss`` (``_trl_distill``; the models are not patched).
    Anything else raises here, at patch time, never a silent no-op or another loss: a head
    crossent would bypass, an encoder-decoder model, a loss the probe does not recognise, an
    unsupported TRL version or trainer option (``Unsupported``, a ValueError).
    chunk_size: passed to ``linear_cross_entropy`` (tokens per chunk; default: its own choice).

    Cost: 1-3 forwards of the model on 8 tokens, without gradient (the probe: the patched model's
    loss contract, ``_contract``); the model is left as it was found (training flags, RNG states,
    state its forward changes).

    In training mode with ``labels`` the patched forward returns the model's own output class with
    ``loss`` set and ``logits=None``; the logits are never built. The loss is, to float rounding,
    the unpatched model's, as the probe learnt it: labels shifted (transformers' causal-LM loss)
    or as given (BART-family decoders), -100 ignored, ``shift_labels`` / ``num_items_in_batch``
    used as the model's loss uses them (the sum divided by ``num_items_in_batch``: Trainer's
    gradient accumulation) or passed on to its forward, its softcap and logit factors, and a
    mixture-of-experts model's ``aux_loss`` times the coefficient it adds it with. With
    ``logits_to_keep`` the loss covers the kept positions only. ``model.loss_function`` is not used.
    ``unpatch(obj)`` removes the patch again.
    """
    fn = "patch"
    chunk_size = _checks.chunk_size(fn, chunk_size)
    if _distillation_trainer(obj):  # its loss is one function of both heads (_trl_distill)
        _trl_distill.check(fn, obj, _trl.version())
        _trl_distill.patch(obj, chunk_size)
        return obj
    models = _models(fn, obj)
    trl_trainer = _is_trainer(obj) and _trl.is_trl_trainer(obj)
    states = [_check_model(fn, m, chunk_size, trl_trainer) for m in models]  # all, then patch
    for model, state in zip(models, states):
        _install(model, state)
    return obj


def unpatch(obj: Any) -> Any:
    """Undo ``patch(obj)``; returns ``obj``. A model whose crossent layer is the outermost forward
    is left exactly as before; one wrapped since (by TRL, accelerate) keeps the wrapper, with
    crossent's layer inside it now a pass-through."""
    if _distillation_trainer(obj):
        _trl_distill.unpatch("unpatch", obj)
        return obj
    for model in _models("unpatch", obj):
        state = _layers.active(model)
        if state is None:
            _checks.not_patched("unpatch", model)
        _layers.remove_probe(state.backbone, state.probe)
        _layers.remove(model, state)
    return obj


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _is_decoder_vlm(model: nn.Module) -> bool:
    """A decoder-only *ForConditionalGeneration whose loss is transformers' causal-LM loss."""
    if not type(model).__name__.endswith("ForConditionalGeneration"):
        return False
    if getattr(model.config, "is_encoder_decoder", False):
        return False  # T5, BART, Whisper: their labels are decoder targets, not shifted
    from transformers.loss.loss_utils import ForCausalLMLoss

    return getattr(model, "loss_function", None) is ForCausalLMLoss


# Config fields that may post-process the logits: (name, logits = logits * value or / value).
_FACTORS = (("logit_scale", False), ("logits_scaling", True), ("lm_head_multiplier", False))
_SOFTCAPS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def _logit_candidates(fn: str, config: Any) -> tuple[dict[str, float], dict[str, float]]:
    """The logit factors and softcaps the config (or its text config) names, by name: Cohere's
    ``logit_scale``, Granite's ``logits_scaling``, Falcon-H1's ``lm_head_multiplier``; Gemma's
    ``final_logit_softcapping``, RecurrentGemma's ``logits_soft_cap``, xLSTM's
    ``output_logit_soft_cap``. The probe keeps those the forward really applies (Gemma 3's VLM
    does not apply its text config's softcap; MiniCPM3 divides the hidden states instead)."""
    configs = {"config": config}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        configs["text_config"] = text
    factors, softcaps = {}, {}
    for label, cfg in configs.items():
        for name, divides in _FACTORS:
            value = _checks.config_number(fn, cfg, name)
            if value is not None:
                factors[f"{label}.{name}"] = 1.0 / value if divides else value
        for name in _SOFTCAPS:
            value = _checks.config_number(fn, cfg, name)
            if value is not None:
                softcaps[f"{label}.{name}"] = value
    return factors, softcaps


def _check_model(fn: str, model: Any, chunk_size: int | None, trl_trainer: bool) -> _forward.PatchState:
    _checks.pretrained_model(fn, model, transformers.PreTrainedModel)
    if not (_is_causal_lm(model) or _is_decoder_vlm(model)):
        _checks.not_a_causal_lm(fn, model)
    outer = vars(model).get("forward")
    trl = _trl.fused_head(fn, model, outer) if _trl.is_fused_forward(outer) else None
    if trl_trainer and trl is None:
        _checks.trl_forward_missing(fn, model, outer)  # e.g. patch(trainer) after train() began
    if _layers.active(model) is not None and trl is None:
        _checks.already_patched(fn, model)
    head = _head.check(fn, model, model.get_output_embeddings())
    slot = _head.slot(fn, model, head)
    factors, softcaps = _logit_candidates(fn, model.config)
    # The class's forward: a wrapper's own signature may be (*args, **kwargs).
    signature = inspect.signature(type(model).forward.__get__(model))
    _checks.forward_takes_labels(fn, model, signature)
    params = signature.parameters.values()
    positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    # Last, once everything cheap has passed: what the model's own loss does (a tiny forward).
    contract = _contract.learn(fn, model, slot, head, factors, softcaps, takes_kwargs)
    return _forward.PatchState(slot, head, positional, takes_kwargs, contract.scale,
                               contract.softcap, chunk_size, contract=contract, trl=trl)


def _call(model: nn.Module, state: _forward.PatchState, args: tuple, kwargs: dict) -> Any:
    """The active layer's forward (see _layers.install)."""
    probe = state.probe
    if probe is not None:
        probe.inside += 1  # the backbone runs inside crossent's layer: not a bypass
    try:
        if state.trl is not None and kwargs.get("fused_lm_head"):
            return _trl.fused_forward(model, state, args, kwargs)
        return _forward.labels_forward(model, state, args, kwargs)
    finally:
        if probe is not None:
            probe.inside -= 1


def _install(model: nn.Module, state: _forward.PatchState) -> None:
    old = _layers.active(model)
    if old is not None:  # patched before TRL wrapped it: that layer, now bypassed, becomes inert
        _layers.remove_probe(old.backbone, old.probe)
        _layers.remove(model, old)
    backbone = getattr(model, "base_model", None)  # what TRL's fused LM head runs directly
    state.backbone = backbone if isinstance(backbone, nn.Module) and backbone is not model else None
    state.probe = _layers.add_probe(model, state.backbone, _trl.bypass_message)
    _layers.install(model, state, _call)
