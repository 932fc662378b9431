"""``patch`` / ``unpatch``: the fused loss for every ``*ForCausalLM``, the logits never built.

How ``patch`` works (and why it keeps distributed parameter gathering working)
------------------------------------------------------------------------------
The patched forward calls the model's own, unchanged forward with ``labels=None``, while the output
head (``model.get_output_embeddings()``, a direct child such as ``lm_head``) is swapped, for the
duration of that call only, for a parameter-free module that records the hidden states it is given
-- after the model's own ``logits_to_keep`` slicing -- and returns a tiny probe tensor. Whatever
the model does to its logits afterwards (Gemma 2's softcap, Cohere's scale) is applied to the
probe, and the result is checked against what the config says (``final_logit_softcapping``,
``logit_scale``, ``logits_scaling``): an unknown post-processing raises instead of being silently
dropped.

The loss is then computed *inside a call of the real head module*: ``model.lm_head(hidden)`` is
called with the head's ``forward`` temporarily replaced by the fused loss, which reads
``head.weight`` and ``head.bias`` at that moment. So every hook on the head runs around the fused
loss exactly as it runs around the ordinary ``F.linear``: FSDP's and DeepSpeed ZeRO-3's pre-forward
hooks gather the sharded weight before it is read, their post-forward hooks release it, and the
backward hooks they attach to the module's output attach to the loss, so the weight is gathered
again before the loss's backward reads it. (Reading ``model.lm_head.weight`` from outside the
module's call, as some integrations do, reads the empty shard under ZeRO-3.) The head is called
once per step, as without crossent. Because ``patch`` stores only the child's name, wrapping the
head after patching (FSDP1 auto-wrap) is fine too: the wrapper is what gets called.

Training only: in eval mode, or without labels, the original forward runs untouched (logits and
loss as transformers computes them), so evaluation metrics that need logits keep working.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any

import torch
import transformers
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ... import functional as _functional
from ..._checks import integrations as _checks
from ._common import IGNORE_INDEX, loss_dtype, normalizer, shifted_labels

_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

_STATE = "_crossent_patch"  # instance attribute holding what unpatch needs


@dataclasses.dataclass
class _PatchState:
    head_name: str  # the output head's attribute name on the model, e.g. "lm_head"
    head: nn.Linear  # the linear layer whose weight and bias the loss reads
    previous_forward: Any  # the instance's own `forward` attribute before patch, or None
    positional: tuple[str, ...]  # the original forward's parameters a positional argument can fill
    takes_kwargs: bool  # it has **kwargs (where the loss-only arguments arrive)
    scale: float  # logits = scale * (h @ W.T + b) before the softcap
    softcap: float | None
    chunk_size: int | None
    probe_checked: bool = False  # the logit post-processing was checked once, in eager mode


class _Capture(nn.Module):
    """Stands in for the head during the decoder's forward: records h, returns a probe."""

    # Two logits per position, distinct enough that a missed scale or softcap shows.
    PROBE = (0.75, -3.0)

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T', D) -> (B, T', 2)
        self.hidden = hidden
        probe = torch.tensor(self.PROBE, dtype=hidden.dtype, device=hidden.device)
        return probe.expand(*hidden.shape[:-1], len(self.PROBE))


def _is_causal_lm(model: nn.Module) -> bool:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return False
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _logit_transform(fn: str, config: Any) -> tuple[float, float | None]:
    """(scale, softcap) from the config: logits = softcap * tanh(scale * (hW^T + b) / softcap)."""
    scale = 1.0
    logit_scale = _checks.config_number(fn, config, "logit_scale")  # Cohere: logits * logit_scale
    if logit_scale is not None:
        scale *= logit_scale
    logits_scaling = _checks.config_number(fn, config, "logits_scaling")  # Granite: logits / it
    if logits_scaling is not None:
        scale /= logits_scaling
    softcap = _checks.config_number(fn, config, "final_logit_softcapping")  # Gemma 2 and 3
    return scale, softcap


def is_patched(model: nn.Module) -> bool:
    """Whether ``patch(model)`` is in effect."""
    return _STATE in vars(model)


def patch(model: nn.Module, *, chunk_size: int | None = None) -> nn.Module:
    """Make ``model``'s training forward compute its loss with ``crossent.linear_cross_entropy``.

    model: an instance of a transformers causal-LM class (``*ForCausalLM``, ``GPT2LMHeadModel``,
    ...) whose output embedding is a plain ``nn.Linear`` (tied input embeddings included) held as a
    direct child. Anything else raises here, at patch time: a head that is not a plain linear
    layer (a quantised or LoRA-wrapped ``lm_head``, say) would otherwise be silently bypassed.
    chunk_size: passed to ``linear_cross_entropy`` (tokens per chunk; default: its own choice).

    In training mode with ``labels`` the patched forward returns the model's own output class with
    ``loss`` set and ``logits=None``; the logits are never built. The loss is, to float rounding,
    the unpatched model's: labels shifted (or ``shift_labels`` used as given), -100 ignored, the
    mean over counted tokens or the sum divided by ``num_items_in_batch`` when given (Trainer's
    gradient accumulation), ``config.final_logit_softcapping`` applied as ``softcap``, a logit
    scale from ``config.logit_scale`` / ``config.logits_scaling``, and a mixture-of-experts
    model's ``aux_loss`` added with ``config.router_aux_loss_coef`` as transformers adds it.
    With ``logits_to_keep`` the loss covers the kept positions only (their shifted labels).
    ``model.loss_function`` is not used by the patched path.
    Returns ``model`` (patched in place); ``unpatch(model)`` restores it exactly.

    How the head's hooks (FSDP, DeepSpeed ZeRO-3) keep firing: the docstring of
    ``crossent.integrations.transformers._patch``, the module that defines ``patch``.
    """
    fn = "patch"
    _checks.pretrained_model(fn, model, transformers.PreTrainedModel)
    if not _is_causal_lm(model):
        _checks.not_a_causal_lm(fn, model)
    if is_patched(model):
        _checks.already_patched(fn, model)
    head = _checks.plain_linear_head(fn, model, model.get_output_embeddings())
    head_name = _checks.head_name(
        fn, model, next((n for n, m in model.named_children() if m is head), None)
    )
    chunk_size = _checks.chunk_size(fn, chunk_size)
    scale, softcap = _logit_transform(fn, model.config)
    previous = vars(model).get("forward")
    original = model.forward
    signature = inspect.signature(original)
    _checks.forward_takes_labels(fn, model, signature)

    params = signature.parameters.values()
    positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    state = _PatchState(head_name, head, previous, positional, takes_kwargs, scale, softcap, chunk_size)
    vars(model)[_STATE] = state

    def forward(self, *args, **kwargs):
        return _patched_forward(self, args, kwargs)

    # Trainer reads the forward's signature (which columns to keep, whether it takes
    # num_items_in_batch): show the original's.
    forward.__signature__ = inspect.signature(type(model).forward)
    forward.__doc__ = original.__doc__
    forward.__name__ = "forward"
    # A bound method, not a closure over model: copy.deepcopy(model) rebinds it to the copy.
    vars(model)["forward"] = types.MethodType(forward, model)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``patch(model)``: the model is left exactly as before (its own forward back)."""
    if not is_patched(model):
        _checks.not_patched("unpatch", model)
    state: _PatchState = vars(model).pop(_STATE)
    if state.previous_forward is None:
        del vars(model)["forward"]
    else:
        vars(model)["forward"] = state.previous_forward
    return model


def _original_forward(model: nn.Module, state: _PatchState):
    if state.previous_forward is None:
        return type(model).forward.__get__(model)
    return state.previous_forward


def _patched_forward(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    state: _PatchState = vars(model)[_STATE]
    original = _original_forward(model, state)
    # The arguments by name. (inspect.Signature.bind would do it, but torch.compile cannot trace
    # it; anything unusual -- too many positional arguments, a name given twice -- goes to the
    # original forward, which raises as it always does.)
    names = state.positional
    if len(args) > len(names) or any(n in kwargs for n in names[: len(args)]):
        return original(*args, **kwargs)
    arguments = dict(zip(names, args))
    arguments.update(kwargs)
    labels = arguments.get("labels")
    if not model.training or labels is None:
        return original(*args, **kwargs)

    # Loss-only keyword arguments (the model would pass them on to its loss_function).
    loss_only = state.takes_kwargs
    shift_labels = arguments.pop("shift_labels", None) if loss_only else None
    num_items_in_batch = arguments.pop("num_items_in_batch", None) if loss_only else None
    arguments["labels"] = None

    # 1. The model's own forward, head swapped for a capture: hidden states, no logits.
    head_module = model._modules[state.head_name]  # the head, or a wrapper installed since patch
    capture = _Capture()
    model._modules[state.head_name] = capture
    try:
        out = original(**arguments)
    finally:
        model._modules[state.head_name] = head_module
    # (B, T', D), after the model's logits_to_keep slicing
    hidden = _checks.captured_hidden(model, state.head_name, capture.hidden)
    is_output = isinstance(out, ModelOutput)
    logits = out.get("logits") if is_output else out[0]
    _check_probe(model, state, logits)

    # 2. Targets aligned with the kept positions.
    if shift_labels is None:
        shift_labels = shifted_labels(labels, IGNORE_INDEX)
    target = _kept_targets(model, arguments, shift_labels.to(hidden.device), hidden)  # (B, T')
    norm = normalizer(_checks.PATCHED, num_items_in_batch, hidden.device)

    # 3. The loss, inside a call of the head module so that its hooks fire around it.
    loss = _head_loss(head_module, state, hidden, target, norm)

    aux = out.get("aux_loss") if is_output else None
    if aux is not None:  # mixture of experts: transformers adds coef * aux_loss when labels given
        loss = loss + _checks.router_aux_loss_coef(model) * aux.to(loss.device)

    if is_output:
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        return type(out)(loss=loss, **fields)
    return (loss, None, *out[1:])


def _check_probe(model: nn.Module, state: _PatchState, logits: Any) -> None:
    """The model's post-processing of its logits must be the (scale, softcap) patch applies.

    It is a property of the model's code and config, so it is checked once, at the first training
    step: on the CPU by reading the probe back; on an accelerator, and while torch.compile traces,
    by an assertion evaluated on the device (no host sync, no graph break)."""
    if state.probe_checked:
        return
    probe = torch.tensor(_Capture.PROBE, dtype=torch.float64)
    expected = probe * state.scale
    if state.softcap is not None:
        expected = state.softcap * torch.tanh(expected / state.softcap)
    ok_shape = torch.is_tensor(logits) and logits.shape[-1:] == probe.shape and logits.numel()
    if _compiling():
        _checks.logit_probe_traced(model, logits if ok_shape else None, expected)
        return
    if ok_shape and logits.device.type != "cpu":
        _checks.logit_probe_traced(model, logits, expected)
        state.probe_checked = True
        return
    got = logits.reshape(-1, probe.numel())[0].detach().to("cpu", torch.float64) if ok_shape else None
    _checks.logit_probe(model, _Capture.PROBE, got, expected, state.scale, state.softcap)
    state.probe_checked = True


def _kept_targets(model, arguments, shift_labels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    kept = hidden.shape[:-1]
    if shift_labels.shape == kept:
        return shift_labels
    # transformers >= 4.50 names it logits_to_keep, 4.46-4.49 num_logits_to_keep.
    keep = arguments.get("logits_to_keep", arguments.get("num_logits_to_keep"))
    if isinstance(keep, int) and keep > 0:
        sliced = shift_labels[..., -keep:]
    elif torch.is_tensor(keep):
        sliced = shift_labels[..., keep.to(shift_labels.device)]
    else:
        sliced = shift_labels
    return _checks.kept_targets(model, shift_labels, sliced, kept)


def _head_loss(head_module: nn.Module, state: _PatchState, hidden, target, norm) -> torch.Tensor:
    head = state.head
    scale, softcap, chunk_size = state.scale, state.softcap, state.chunk_size

    def fused(h: torch.Tensor) -> torch.Tensor:  # (B, T', D) -> ()
        weight, bias = head.weight, head.bias  # read now: after the gathering pre-hooks
        if scale != 1.0:  # scale * (h W^T + b) = (scale h) W^T + scale b
            h = h * scale
            bias = bias * scale if bias is not None else None
        return _functional.linear_cross_entropy(
            h.reshape(-1, h.shape[-1]), weight, target.reshape(-1), linear_bias=bias,
            ignore_index=IGNORE_INDEX, reduction="mean", softcap=softcap, normalizer=norm,
            chunk_size=chunk_size, dtype=loss_dtype(h),
        )

    previous = vars(head).get("forward")
    vars(head)["forward"] = fused
    try:
        return head_module(hidden)
    finally:
        if previous is None:
            del vars(head)["forward"]
        else:
            vars(head)["forward"] = previous
