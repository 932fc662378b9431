"""The output head as the fused loss reads it: a plain ``nn.Linear``, or PEFT's LoRA ``Linear`` or
``ModulesToSaveWrapper`` over one.

The loss is computed inside a call of the head module (its hooks fire around it: FSDP's and
ZeRO-3's gathering, see ``_patch``), with the module's ``forward`` replaced for that call by a
function of the hidden states. ``operands`` says what that function multiplies:

* plain ``nn.Linear``: ``logits = h W^T + b``, so (h, W, b); PEFT's ``ModulesToSaveWrapper``
  (``modules_to_save=["lm_head"]``): the same, of the copy it runs (the active adapter's).
* PEFT ``lora.Linear`` over a plain linear layer (LoRA on ``lm_head``), each active adapter a with
  ``A_a`` (r, D), ``B_a`` (V, r), dropout and scaling ``s_a``::

      logits = h W^T + b + sum_a s_a * dropout_a(h) A_a^T B_a^T
             = [h, s_1 dropout_1(h) A_1^T, ...] @ [W, B_1, ...]^T + b

  so the fused loss reads the concatenations (N, D + sum r) and (V, D + sum r): exact, with dropout
  (drawn once, as PEFT draws it), and autograd carries the loss's gradients to A_a and B_a through
  the concatenation. Extra memory: one (V, D + sum r) copy of the weight per call. Merged or
  disabled adapters are the base layer alone. LoRA variants (DoRA, ...), a bias on B, and
  ``fan_in_fan_out`` change the algebra above and are refused.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch
from torch import nn

from ..._checks import integrations as _checks


@dataclasses.dataclass
class Slot:
    """Where the output head hangs: ``parent._modules[name]``; ``path`` its dotted name in the model
    (``lm_head``; ``cls.predictions.decoder`` in BERT-style LM heads). The parent is kept, not the
    path, so that a wrapper installed since patch (FSDP1 around the parent or the head, PEFT's
    LoRA on the head) is still found."""

    parent: nn.Module
    name: str
    path: str

    def swap(self, module: nn.Module) -> nn.Module:
        """Hang module in the slot; return what hung there."""
        previous = self.parent._modules[self.name]
        self.parent._modules[self.name] = module
        return previous


def slot(fn: str, model: nn.Module, head: nn.Module) -> Slot:
    """The slot of the head among the model's submodules (refused if it is not one)."""
    path = _checks.head_path(fn, model, next((n for n, m in model.named_modules() if m is head and n), None))
    parent, _, name = path.rpartition(".")
    return Slot(model.get_submodule(parent) if parent else model, name, path)


def _lora_linear_type() -> type | None:
    # PEFT is imported only if the user imported it (a LoRA head exists only then).
    module = sys.modules.get("peft.tuners.lora.layer")
    return getattr(module, "Linear", None) if module is not None else None


def is_peft_model(obj: object) -> bool:
    module = sys.modules.get("peft")
    base = getattr(module, "PeftModel", None) if module is not None else None
    return base is not None and isinstance(obj, base)


def _modules_to_save_type() -> type | None:
    module = sys.modules.get("peft.utils.other")
    return getattr(module, "ModulesToSaveWrapper", None) if module is not None else None


def is_modules_to_save(module: object) -> bool:
    wrapper = _modules_to_save_type()
    return wrapper is not None and type(module) is wrapper


def _saved_copy(head: nn.Module) -> nn.Module:
    """The module a ModulesToSaveWrapper (PEFT ``modules_to_save=["lm_head"]``) runs: the trained
    copy of the active adapter, or the original when adapters are off (its own rule)."""
    active = list(head.active_adapters)
    if head.disable_adapters or not active or any(a not in head._adapters for a in active):
        return head.original_module
    return head.modules_to_save[active[0]]


def is_plain_linear(module: object) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def is_lora(module: object) -> bool:
    lora = _lora_linear_type()
    return lora is not None and type(module) is lora


def _active_adapters(fn: str, model: nn.Module, head: nn.Module) -> list[str]:
    """The LoRA adapters whose terms enter the logits; refuses what `operands` cannot express."""
    if head.disable_adapters or head.merged:
        return []
    if not is_plain_linear(head.base_layer):
        _checks.lora_head_unsupported(fn, model, f"its base layer is {type(head.base_layer).__name__}")
    if getattr(head, "fan_in_fan_out", False):
        _checks.lora_head_unsupported(fn, model, "fan_in_fan_out=True")
    names = [a for a in head.active_adapters if a in head.lora_A.keys()]
    for a in names:
        if a in getattr(head, "lora_variant", {}):
            _checks.lora_head_unsupported(fn, model, f"adapter {a!r} is a LoRA variant (DoRA, ...)")
        if head.lora_B[a].bias is not None:
            _checks.lora_head_unsupported(fn, model, f"adapter {a!r} has a bias (lora_bias=True)")
        if not (is_plain_linear(head.lora_A[a]) and is_plain_linear(head.lora_B[a])):
            _checks.lora_head_unsupported(fn, model, f"adapter {a!r} is not a pair of linear layers")
    return names


def check(fn: str, model: nn.Module, head: object) -> nn.Module:
    """At patch time: the head is one `operands` can read."""
    if is_lora(head):
        _active_adapters(fn, model, head)
        return head
    if is_modules_to_save(head):
        _checks.plain_linear_head(fn, model, _saved_copy(head))
        return head
    return _checks.plain_linear_head(fn, model, head)


def target(module: nn.Module, at_patch: nn.Module) -> nn.Module:
    """The module whose forward becomes the loss: the child itself when it is a head `operands`
    reads (PEFT may wrap or unwrap lm_head after patch), else the head found at patch time, inside
    a wrapper installed since (FSDP1 auto-wrap), which is what gets called."""
    readable = is_lora(module) or is_modules_to_save(module) or is_plain_linear(module)
    return module if readable else at_patch


def operands(model: nn.Module, head: nn.Module, hidden: torch.Tensor):
    """(h (N, D'), W (V, D'), b (V,) or None) with logits = h W^T + b, for hidden (..., D)."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if is_modules_to_save(head):
        inner = _checks.plain_linear_head(_checks.PATCHED, model, _saved_copy(head))
        return h, inner.weight, inner.bias
    if not is_lora(head):
        return h, head.weight, head.bias
    base = head.base_layer
    names = _active_adapters(_checks.PATCHED, model, head)
    if not names:
        return h, base.weight, base.bias
    hs, ws = [h], [base.weight]
    for a in names:
        lora_a, lora_b = head.lora_A[a], head.lora_B[a]
        # dropout over the hidden states as given (the draws PEFT makes), then the (N, r) product
        x = head.lora_dropout[a](hidden.to(lora_a.weight.dtype)).reshape(-1, hidden.shape[-1])
        hs.append((lora_a(x) * head.scaling[a]).to(h.dtype))  # (N, r)
        ws.append(lora_b.weight.to(base.weight.dtype))  # (V, r)
    return torch.cat(hs, dim=-1), torch.cat(ws, dim=-1), base.bias


_LINEAR_ATTRIBUTES = ("weight", "bias", "in_features", "out_features")


def expose(stand_in: nn.Module, head: nn.Module) -> None:
    """Give a stand-in for the head what an nn.Linear exposes, as the head has it (a LoRA layer's
    ``weight`` is its base layer's): forwards that read ``lm_head.weight.dtype`` (Mamba, xLSTM)
    see the head's. In the instance dict, so the stand-in registers no parameter."""
    for name in _LINEAR_ATTRIBUTES:
        value = getattr(head, name, expose)  # (expose: a sentinel no head holds)
        if value is not expose:
            vars(stand_in)[name] = value


def out_features(head: nn.Module) -> int:
    """The vocabulary size V of a head `check` accepted (the global one under FSDP / ZeRO-3)."""
    if is_modules_to_save(head):
        head = _saved_copy(head)
    return int(head.base_layer.out_features if is_lora(head) else head.out_features)


def call_inside(head: nn.Module, module: nn.Module, fused, hidden: torch.Tensor) -> Any:
    """module(hidden) with head's forward replaced by fused for the call (head is module or
    inside it): the module's hooks run around the fused loss."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any):
        if args or kwargs:  # e.g. PEFT's mixed-adapter batches inject adapter_names
            _checks.head_call_arguments(head, args, kwargs)
        return fused(x)

    previous = vars(head).get("forward")
    vars(head)["forward"] = forward
    try:
        return module(hidden)
    finally:
        if previous is None:
            del vars(head)["forward"]
        else:
            vars(head)["forward"] = previous
