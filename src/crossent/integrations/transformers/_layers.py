"""crossent's layer in a model's ``forward`` chain: installed on top, removed without touching others.

A model's forward is a chain of wrappers: ``vars(model)["forward"]`` (the outermost, if any) wraps
whatever ``model.forward`` was when it was installed, down to the class's ``forward``. TRL's fused
LM head, accelerate's autocast / fp32 wrappers and crossent's patch all install themselves this way,
and each keeps the one below it (TRL and accelerate in a closure, crossent in its state).

crossent's layer is a function carrying a token; its state lives in ``vars(model)[LAYERS][token]``
(looked up on each call, so ``copy.deepcopy(model)`` and accelerate's re-binding of
``model.forward.__func__`` to the model both find the right state). Removing the layer:

* it is the outermost wrapper: the forward it replaced is put back, exactly;
* something wrapped it since (TRL, accelerate): that wrapper holds it in a closure crossent must
  not edit, so the layer stays in the chain *inert* -- a pass-through to the forward below it, the
  same call as if it were gone -- and no longer counts for ``is_patched``.
"""

from __future__ import annotations

import inspect
import itertools
import types
import warnings
import weakref
from typing import Any

import torch
from torch import nn

LAYERS = "_crossent_layers"  # vars(model): {token: state}, every layer crossent installed
_tokens = itertools.count(1)


def layers(model: nn.Module) -> dict[int, Any]:
    return vars(model).get(LAYERS, {})


def active(model: nn.Module) -> Any | None:
    """The state of the model's active crossent layer, or None."""
    return next((s for s in layers(model).values() if s.active), None)


def token_of(forward: Any) -> int | None:
    """The token of a crossent layer given a forward (bound or not); None for anything else."""
    return getattr(getattr(forward, "__func__", forward), "_crossent_token", None)


def below(model: nn.Module, state: Any):
    """The forward a layer wraps, bound to the model: the one it replaced, or the class's."""
    if state.previous_forward is None:
        return type(model).forward.__get__(model)
    return state.previous_forward


def install(model: nn.Module, state: Any, call) -> None:
    """Put a layer on top of the model's forward chain. call(model, state, args, kwargs) runs it."""
    token = next(_tokens)
    state.token = token
    state.active = True
    state.previous_forward = vars(model).get("forward")
    vars(model).setdefault(LAYERS, {})[token] = state

    def forward(self, *args, **kwargs):
        layer = vars(self)[LAYERS][token]
        if not layer.active:  # unpatched while wrapped by someone else: a pass-through
            return below(self, layer)(*args, **kwargs)
        return call(self, layer, args, kwargs)

    # Trainer and generate read the forward's signature (columns kept, kwargs validated): the class's.
    forward.__signature__ = inspect.signature(type(model).forward)
    forward.__doc__ = type(model).forward.__doc__
    forward.__name__ = "forward"
    forward._crossent_token = token
    # A bound method, not a closure over model: copy.deepcopy(model) rebinds it to the copy.
    vars(model)["forward"] = types.MethodType(forward, model)


def remove(model: nn.Module, state: Any) -> None:
    """Take the layer out: restored if outermost, inert (a pass-through) if wrapped since."""
    state.active = False
    # Peel inert crossent layers off the top, this one included, while they are outermost.
    table = vars(model)[LAYERS]
    top = table.get(token_of(vars(model).get("forward")))
    while top is not None and not top.active:
        del table[top.token]
        if top.previous_forward is None:
            del vars(model)["forward"]
        else:
            vars(model)["forward"] = top.previous_forward
        top = table.get(token_of(vars(model).get("forward")))
    if not table:
        del vars(model)[LAYERS]


def outermost_is_crossent(model: nn.Module) -> bool:
    return token_of(vars(model).get("forward")) in layers(model)


class BypassProbe:
    """A forward pre-hook on the decoder backbone of a patched model: it warns, once, when the
    backbone runs for a training step outside crossent's layer while something else is the
    outermost forward -- a wrapper installed after ``patch`` (TRL's fused LM head) that computes
    the loss itself, so crossent never runs."""

    def __init__(self, model: nn.Module, message) -> None:
        self.model = weakref.ref(model)
        self.message = message  # message(model) -> str
        self.inside = 0  # depth of crossent layer calls in progress
        self.warned = False

    def __call__(self, module: nn.Module, args: tuple) -> None:
        model = self.model()
        if (
            model is None or self.inside or self.warned or not model.training
            or not torch.is_grad_enabled() or active(model) is None or outermost_is_crossent(model)
        ):
            return
        self.warned = True
        warnings.warn(self.message(model), RuntimeWarning, stacklevel=2)

    def __deepcopy__(self, memo: dict) -> BypassProbe:
        # The model is copied before its children (deepcopy memoises it first): point at the copy.
        model = self.model()
        twin = BypassProbe.__new__(BypassProbe)
        twin.model = weakref.ref(memo.get(id(model), model))
        twin.message, twin.inside, twin.warned = self.message, 0, self.warned
        return twin


def add_probe(model: nn.Module, backbone: nn.Module | None, message) -> BypassProbe | None:
    if backbone is None or backbone is model:
        return None
    probe = BypassProbe(model, message)
    backbone.register_forward_pre_hook(probe)
    return probe


def remove_probe(backbone: nn.Module | None, probe: BypassProbe | None) -> None:
    if backbone is None or probe is None:
        return
    hooks = backbone._forward_pre_hooks  # no handle kept: handles do not survive deepcopy cleanly
    for key in [k for k, h in hooks.items() if h is probe]:
        del hooks[key]
