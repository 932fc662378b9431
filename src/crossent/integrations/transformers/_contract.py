"""Which loss a model's own forward computes, learnt at ``patch`` time: the ``LossContract`` the
patched forward follows, or a refusal.

transformers' causal LMs do not share one loss: most call ``self.loss_function`` (labels shifted
by one, ``shift_labels`` and ``num_items_in_batch`` honoured), the BART-family decoders, TrOCR,
Whisper and CPM-Ant apply ``CrossEntropyLoss`` to the labels as given, MoE models add
``c * aux_loss`` with ``c`` under one of several names, some scale or softcap their logits under
config names that are sometimes applied elsewhere (MiniCPM3's ``logits_scaling`` divides the
hidden states), and some compute what crossent does not (MusicGen's per-codebook mean,
ProphetNet's n-gram streams). Neither the class name nor the forward's source says reliably
which, so ``patch`` asks the model (``_probe``: its forward on 8 tokens, designed logits ``L``
from a stand-in head, labels ``y`` with one -100; ``L'`` the logits it returns)::

    scale, softcap  L' = softcap * tanh(scale * L / softcap), scale the product of a subset of
                the config's logit factors (all first), softcap one of its softcaps or none
    shift       loss = CE(L'[:, :-1], y[:, 1:]) [+ c * aux]  -> True   (causal-LM loss)
                loss = CE(L', y)                [+ c * aux]  -> False  (labels as given)
    aux_coef    c: a numeric ``*aux*coef*`` / ``*aux*weight*`` attribute of the model or its
                configs (0.0: aux_loss returned, not added); the forward must return the same
                aux_loss without labels, as the patched forward runs it
    loss_kwargs with shift_labels S and num_items_in_batch n (forwards with **kwargs):
                loss = sum CE(L', S) / n                     -> True   (they reach the loss)
                the loss without them                        -> False  (passed on, unused)

Anything else is refused with the numbers the model returned. Probe runs: one, plus one for a
returned aux_loss, plus one for a forward with **kwargs (two for most models; the MoE aux loss is
asked for with ``output_router_logits=True`` where the forward takes it).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import integrations_probe as _checks
from . import _head, _probe
from ._common import IGNORE_INDEX

_AUX_NAME = re.compile(r"aux\w*(coef|weight)")


@dataclasses.dataclass(frozen=True)
class LossContract:
    """The loss the model's forward computes from its logits (see the module docstring)."""

    shift: bool = True  # labels shifted by one (causal-LM loss) or used as given
    loss_kwargs: bool = True  # shift_labels / num_items_in_batch reach the loss (else passed on)
    aux_coef: float | None = None  # coefficient of aux_loss in the loss; None: no aux_loss seen
    scale: float = 1.0  # logits = softcap * tanh(scale * (h W^T + b) / softcap)
    softcap: float | None = None


def learn(fn: str, model: nn.Module, slot: _head.Slot, head: nn.Module, factors: dict[str, float],
          softcaps: dict[str, float], takes_kwargs: bool) -> LossContract:
    """The contract of the model's loss, from probe runs; refuses what crossent cannot reproduce.
    factors / softcaps: the config's candidate logit factors and softcaps, by name."""
    _checks.probe_weights(fn, model, [n for n, p in model.named_parameters() if p.is_meta])
    vocab = _head.out_features(head)
    ids, labels = _probe.inputs(fn, model, vocab)
    params = inspect.signature(type(model).forward).parameters
    base: dict[str, Any] = {"input_ids": ids, "labels": labels}
    if "use_cache" in params:
        base["use_cache"] = False

    def run(strict: bool = True, **change: Any) -> _probe.Run | None:
        return _probe.run(fn, model, slot, head, vocab, labels, {**base, **change}, strict=strict)

    with _probe.probing(model):
        first = None
        if "output_router_logits" in params:  # the MoE aux loss, to learn its coefficient (a
            first = run(strict=False, output_router_logits=True)  # model failing with it fails
            if first is not None:  # so patched too: then probe without it)
                base["output_router_logits"] = True
        first = first or run()
        _checks.probe_loss_returned(fn, model, first.loss)
        scale, softcap = _logit_transform(fn, model, first, labels, vocab, factors, softcaps)
        tol = first.loss_tol
        shift, coef = _convention(fn, model, first, labels, tol)
        if first.aux is not None:  # the patched forward reads aux_loss from a run without labels
            _checks.probe_aux_without_labels(fn, model, first.aux, run(labels=None).aux)
        loss_kwargs = False
        if takes_kwargs:
            given = labels.flip(1)  # shift_labels unlike y's shift; its -100 at another place
            count = int((given != IGNORE_INDEX).sum()) + 3
            third = run(shift_labels=given, num_items_in_batch=count)
            loss_kwargs = _kwargs_reach_loss(fn, model, third, first, coef, given, count, tol)
    return LossContract(shift=shift, loss_kwargs=loss_kwargs, aux_coef=coef, scale=scale,
                        softcap=softcap)


def _logit_transform(fn, model, run: _probe.Run, labels, vocab, factors, softcaps):
    """(scale, softcap) that map the designed logits onto the returned ones; refused if none."""
    designed = _probe.designed_logits(tuple(labels.shape), vocab, labels).double()
    got = run.logits
    if not (torch.is_tensor(got) and tuple(got.shape) == tuple(designed.shape)):
        _checks.probe_logits(fn, model, factors, softcaps)
    got = got.detach().double().cpu()
    tol = dict(rtol=1e-2, atol=1e-2) if run.low_precision else dict(rtol=1e-5, atol=1e-5)
    # compare on the telling columns first (+-BIG, the labels, a few of the pattern): cheap at any V
    cols = sorted({0, 1, *range(min(vocab, 16)), *labels[labels >= 0].tolist()})
    names = list(factors)
    scales = {}
    for k in range(len(names), -1, -1):  # all the config's factors first, then fewer
        for subset in itertools.combinations(names, k):
            scales.setdefault(_product(factors[n] for n in subset), subset)
    for scale, cap in itertools.product(scales, [*dict.fromkeys(softcaps.values()), None]):
        # the full (B, T, V) comparison only for a candidate the telling columns already accept
        if torch.allclose(got[..., cols], _transformed(designed[..., cols], scale, cap), **tol) and (
                torch.allclose(got, _transformed(designed, scale, cap), **tol)):
            return scale, cap
    _checks.probe_logits(fn, model, factors, softcaps)


def _transformed(logits: torch.Tensor, scale: float, cap) -> torch.Tensor:
    """``cap * tanh(scale * logits / cap)``, or ``scale * logits`` when ``cap`` is None."""
    logits = logits * scale
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _product(values) -> float:
    out = 1.0
    for v in values:
        out *= v
    return out


def _ce(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> float:
    logits = logits.detach().double().cpu()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).cpu(),
                           ignore_index=IGNORE_INDEX, reduction=reduction).item()


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def _aux_coefficients(model: nn.Module) -> dict[str, float]:
    """Numeric attributes of the model and its configs named like an aux-loss coefficient."""
    found: dict[str, float] = {}
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for owner, obj in (("model", model), ("config", config), ("text config", text)):
        for name, value in vars(obj).items():
            if _AUX_NAME.search(name) and isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(f"{owner}.{name}", float(value))
    return found


def _convention(fn, model, run: _probe.Run, labels, tol) -> tuple[bool, float | None]:
    """(shift, aux coefficient) that reproduce the returned loss; refuses if none does."""
    loss = float(run.loss.detach().double().item())
    ce = {True: _ce(run.logits[:, :-1], labels[:, 1:]), False: _ce(run.logits, labels)}
    aux = None if run.aux is None else float(run.aux.detach().double().item())
    coefficients = {"": 0.0, **(_aux_coefficients(model) if aux is not None else {})}
    # the (shift, coefficient) closest to the returned loss, if within its rounding
    bound = tol * max(1.0, abs(loss))
    residual, shift, coef = min((abs(loss - ce[s] - c * (aux or 0.0)), s, c)
                                for s in (True, False) for c in coefficients.values())
    if residual > bound:
        _checks.probe_loss_unknown(fn, model, loss, ce[True], ce[False], aux, coefficients)
    fits = {c for c in coefficients.values() if abs(loss - ce[shift] - c * (aux or 0.0)) <= bound}
    if aux is None or len(fits) > 1:
        return shift, None  # no aux_loss, or one too small to tell which coefficient is added
    return shift, coef


def _kwargs_reach_loss(fn, model, run: _probe.Run, first: _probe.Run, coef, given, count, tol) -> bool:
    """Whether shift_labels and num_items_in_batch reached the loss (True) or were ignored by it."""
    loss = float(run.loss.detach().double().item())
    aux = 0.0 if run.aux is None or coef is None else coef * float(run.aux.double().item())
    summed = _ce(run.logits, given, "sum") / count + aux
    if _close(loss, summed, tol):
        return True
    unchanged = float(first.loss.detach().double().item())
    if _close(loss, unchanged, tol):
        return False
    _checks.probe_loss_kwargs(fn, model, loss, summed, unchanged)
