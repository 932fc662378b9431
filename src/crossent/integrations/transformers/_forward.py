"""The patched forward: the model's own forward with its head captured, then the fused loss.

``labels_forward`` is transformers' contract (``model(..., labels=...)`` returns the loss);
``_patch.call`` picks it or ``_trl.fused_forward`` for each call of the layer.
``capture`` is what it and TRL's fused-LM-head contract (``_trl``) share: the model's own,
unchanged forward runs with ``labels=None`` while the output head is swapped, for that call only,
for a parameter-free module recording the hidden states it is given (after the model's own
``logits_to_keep`` slicing) and returning a tiny probe; the probe as the forward returns it tells
whether the model post-processes its logits only as patch knows (scale, softcap). The loss then
follows the model's ``LossContract`` (``_contract``, learnt at patch time): labels shifted or as
given, ``shift_labels`` / ``num_items_in_batch`` used by the loss or passed on to the forward, the
aux-loss coefficient.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ... import functional as _functional
from ..._checks import integrations as _checks
from . import _head, _layers
from ._common import IGNORE_INDEX, loss_dtype, normalizer, shifted_labels
from ._contract import LossContract

_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


@dataclasses.dataclass
class PatchState:
    slot: _head.Slot  # where the output head hangs, e.g. model.lm_head
    head: nn.Module  # the head found at patch time (nn.Linear or PEFT's lora.Linear)
    positional: tuple[str, ...]  # the forward's parameters a positional argument can fill
    takes_kwargs: bool  # it has **kwargs (where the loss-only arguments arrive)
    scale: float  # logits = scale * (h @ W.T + b) before the softcap
    softcap: float | None
    chunk_size: int | None
    contract: LossContract = LossContract()  # what the model's own loss does (_contract)
    trl: Any = None  # _trl.FusedHead: TRL's fused LM head is below this layer
    backbone: nn.Module | None = None  # where the bypass probe hangs
    probe: Any = None  # _layers.BypassProbe
    probe_checked: bool = False  # the logit post-processing was checked once, in eager mode
    warned_no_labels: bool = False
    # set by _layers.install
    token: int = 0
    active: bool = False
    previous_forward: Any = None


class _Capture(nn.Module):
    """Stands in for the head during the decoder's forward: records h, returns a probe; exposes
    the head's weight, bias and sizes (Mamba's forward reads ``lm_head.weight.dtype``)."""

    # Two logits per position, distinct enough that a missed scale or softcap shows.
    PROBE = (0.75, -3.0)

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        _head.expose(self, head)
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T', D) -> (B, T', 2)
        self.hidden = hidden
        probe = torch.tensor(self.PROBE, dtype=hidden.dtype, device=hidden.device)
        return probe.expand(*hidden.shape[:-1], len(self.PROBE))


def by_name(state: PatchState, args: tuple, kwargs: dict) -> dict | None:
    """The arguments by name; None for anything unusual (too many positional arguments, a name
    given twice), which the original forward then raises on as it always does.
    (inspect.Signature.bind would do it, but torch.compile cannot trace it.)"""
    names = state.positional
    if len(args) > len(names) or any(n in kwargs for n in names[: len(args)]):
        return None
    arguments = dict(zip(names, args))
    arguments.update(kwargs)
    return arguments


def labels_forward(model: nn.Module, state: PatchState, args: tuple, kwargs: dict) -> Any:
    original = _layers.below(model, state)
    arguments = by_name(state, args, kwargs)
    if arguments is None:
        return original(*args, **kwargs)
    labels = arguments.get("labels")
    if not model.training or labels is None:
        if model.training and torch.is_grad_enabled() and not state.warned_no_labels and not _compiling():
            state.warned_no_labels = True  # once per model: a loss on these logits is not crossent's
            warnings.warn(_checks.no_labels_message(model), RuntimeWarning, stacklevel=2)
        return original(*args, **kwargs)

    # Loss-only keyword arguments: taken out where the model's loss uses them (its loss_function),
    # else passed on to its forward as it passes them on without crossent (BART's decoders).
    contract = state.contract
    loss_only = state.takes_kwargs and contract.loss_kwargs
    shift_labels = arguments.pop("shift_labels", None) if loss_only else None
    num_items_in_batch = arguments.pop("num_items_in_batch", None) if loss_only else None
    arguments["labels"] = None

    hidden, out, module = capture(model, state, original, arguments)  # (B, T', D)
    if shift_labels is None:
        shift_labels = shifted_labels(labels, IGNORE_INDEX) if contract.shift else labels
    target = _kept_targets(model, arguments, shift_labels.to(hidden.device), hidden)  # (B, T')
    norm = normalizer(_checks.PATCHED, num_items_in_batch, hidden.device)
    loss = head_loss(model, state, module, hidden, target, reduction="mean", normalizer=norm)

    is_output = isinstance(out, ModelOutput)
    aux = out.get("aux_loss") if is_output else None
    if aux is not None:  # mixture of experts: the model adds coef * aux_loss when given labels
        coef = _checks.aux_loss_coefficient(model, contract.aux_coef)
        loss = loss + coef * aux.to(loss.device) if coef else loss
    if is_output:
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        return type(out)(loss=loss, **fields)
    return (loss, None, *out[1:])


def capture(model: nn.Module, state: PatchState, original, arguments: dict):
    """original(**arguments) with the head captured: (hidden (B, T', D), outputs, head module)."""
    module = state.slot.parent._modules[state.slot.name]  # the head, or a wrapper since patch
    stand_in = _Capture(module)
    state.slot.swap(stand_in)
    try:
        out = original(**arguments)
    finally:
        state.slot.swap(module)
    hidden = _checks.captured_hidden(model, state.slot.path, stand_in.hidden)
    logits = out.get("logits") if isinstance(out, ModelOutput) else out[0]
    _check_probe(model, state, logits)
    return hidden, out, module


def _check_probe(model: nn.Module, state: PatchState, logits: Any) -> None:
    """The model's post-processing of its logits must be the (scale, softcap) patch applies.

    It is a property of the model's code and config, so it is checked once, at the first patched
    call: on the CPU by reading the probe back; on an accelerator, and while torch.compile traces,
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


def head_loss(model, state: PatchState, module: nn.Module, hidden, target, *, reduction,
              normalizer=None, after=None):
    """crossent.linear_cross_entropy of the head over hidden (B, T', D) and target (B, T'),
    computed inside a call of the head module so that its hooks fire around it. 'mean' (with
    normalizer: the sum over it) returns a scalar, 'none' the (B*T',) per-token losses.
    after(x, weight, bias), if given, runs in the same call, on the operands the loss read."""
    head = _head.target(module, state.head)
    scale, softcap, chunk_size = state.scale, state.softcap, state.chunk_size

    def fused(h: torch.Tensor) -> torch.Tensor:
        x, weight, bias = _head.operands(model, head, h)  # read now: after the gathering pre-hooks
        if scale != 1.0:  # scale * (x W^T + b) = (scale x) W^T + scale b
            x = x * scale
            bias = bias * scale if bias is not None else None
        loss = _functional.linear_cross_entropy(
            x, weight, target.reshape(-1), linear_bias=bias, ignore_index=IGNORE_INDEX,
            reduction=reduction, softcap=softcap, normalizer=normalizer, chunk_size=chunk_size,
            dtype=loss_dtype(h),
        )
        if after is not None:
            after(x, weight, bias)
        return loss

    return _head.call_inside(head, module, fused, hidden)
