"""Which arguments a loss differentiates: torch's answer, asked of the installed torch once.

torch's autograd refuses some arguments outright when they require grad (its derivatives.yaml marks
them "not differentiable", and the forward raises "The function 'nll_loss_forward' is not
differentiable with respect to argument 'weight'"): the class weight of class-index targets, the
weight of both binary losses, BCE-with-logits' pos_weight (torch 2.13). Others are differentiated
(probability targets and their class weight, BCE targets). crossent gives the same answer at every
size and on every path, so that a call does not start or stop raising when it crosses a dispatch
threshold. The table is probed on 1-element tensors the first time an argument other than the
input requires grad (~1 ms, once per process), so it follows the torch that runs, whatever its
version.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as _torch_F

from ._common import InvalidArgument

_REFUSAL = re.compile(r"The function '(\w+)' is not differentiable with respect to argument '(\w+)'")


def _probe(call, **grads) -> dict[str, str]:
    """{argument: torch's function name} for the arguments torch refuses to differentiate."""
    refused = {}
    with torch.enable_grad():
        for name in grads:
            args = {k: v.detach().requires_grad_(k == name) for k, v in grads.items()}
            try:
                call(**args)
            except RuntimeError as err:
                m = _REFUSAL.search(str(err))
                if m is None:
                    raise
                refused[name] = m.group(1)
    return refused


def _table() -> dict[str, dict[str, str]]:
    x, p, t = torch.zeros(1, 2), torch.full((1, 2), 0.5), torch.zeros(1, dtype=torch.long)
    one = torch.ones(2)
    return {
        "class_index": _probe(lambda weight: _torch_F.nll_loss(x, t, weight), weight=one),
        "probabilities": _probe(lambda weight, target: _torch_F.cross_entropy(x, target, weight),
                                weight=one, target=p),
        "binary": _probe(lambda weight, target: _torch_F.binary_cross_entropy(p, target, weight),
                         weight=one, target=p),
        "binary_logits": _probe(
            lambda weight, target, pos_weight: _torch_F.binary_cross_entropy_with_logits(
                x, target, weight, pos_weight=pos_weight),
            weight=one, target=p, pos_weight=one),
    }


_refused: dict[str, dict[str, str]] | None = None  # {family: {argument: torch's function}}


def refused_by_torch() -> dict[str, dict[str, str]]:
    global _refused
    if _refused is None:
        _refused = _table()
    return _refused


def argument_gradients(fn: str, family: str, **tensors: torch.Tensor | None) -> bool:
    """Refuse, as torch does, an argument of ``family`` ('class_index', 'probabilities', 'binary',
    'binary_logits') that requires grad where torch does not differentiate it (while grad mode is
    on); return whether any other of ``tensors`` needs a gradient (they are torch's differentiable
    extras: probability targets, their class weight, BCE targets)."""
    if not torch.is_grad_enabled():
        return False
    needs = False
    for name, t in tensors.items():
        if t is None or not t.requires_grad:
            continue
        refused = refused_by_torch()[family]
        if name in refused:
            raise InvalidArgument(
                f"{fn}: {name} requires grad, but torch does not differentiate {fn} with respect "
                f"to {name} here (torch: \"The function '{refused[name]}' is not differentiable "
                f"with respect to argument '{name}'. This input cannot have requires_grad True.\"); "
                f"pass {name}.detach()"
            )
        needs = True
    return needs
