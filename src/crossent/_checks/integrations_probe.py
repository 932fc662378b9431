"""Checks of the patch-time probe of the transformers integration (``crossent.integrations.
transformers._probe`` and ``_contract``): what ``patch`` refuses after running a model's forward on
its probe input, each an ``Unsupported`` naming what the model did."""

from __future__ import annotations

from typing import NoReturn

import torch
from torch import nn

from .integrations import Unsupported

_PROBE = "a probe input (input_ids and labels of 8 tokens)"


def _refused(fn: str, model: nn.Module, what: str) -> str:
    return f"{fn}: {type(model).__name__} {what}; crossent refuses it rather than compute another loss"


def probe_weights(fn: str, model: nn.Module, meta: list[str]) -> None:
    if meta:
        raise Unsupported(
            f"{fn}: {type(model).__name__} has parameters on the meta device ({meta[0]}, ...): "
            "patch it once its weights are materialised (patch runs the model on "
            f"{_PROBE} to learn which loss its forward computes)"
        )


def probe_tokens(fn: str, model: nn.Module, tokens: list[int], n: int) -> torch.Tensor:
    """(1, n) ordinary token ids from the middle of the ones offered."""
    if len(tokens) < n:
        raise Unsupported(_refused(fn, model, f"has fewer than {n} ordinary token ids to probe its loss with"))
    middle = len(tokens) // 2 - n // 2
    return torch.tensor([tokens[middle:middle + n]])


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError))


def probe_failed(fn: str, model: nn.Module, exc: Exception) -> NoReturn:
    """The model's forward raised on the probe input: refused, the error chained (out of memory
    is not a property of the model: raised as it is)."""
    if out_of_memory(exc):
        raise exc
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    raise Unsupported(
        _refused(fn, model, f"failed on {_PROBE} ({type(exc).__name__}: {first}), so crossent "
                            "cannot learn which loss its forward computes")
    ) from exc


def probe_head_calls(fn: str, model: nn.Module, name: str, calls: int, got: tuple | None,
                     want: tuple) -> None:
    if calls == 0:
        why = (f"did not call its output embedding {name!r} on {_PROBE} (it computes its logits "
               "another way, e.g. from the weight directly), which crossent's fused loss replaces")
    else:
        why = (f"called its output embedding {name!r} {calls} time(s), on positions of shape {got}, "
               f"for input positions {want}; crossent's fused loss replaces one call over all of them")
    raise Unsupported(_refused(fn, model, why))


def probe_logits(fn: str, model: nn.Module, factors: dict[str, float], softcaps: dict[str, float]) -> NoReturn:
    raise Unsupported(
        f"{fn}: {type(model).__name__} transforms its logits in a way patch does not know (on "
        f"{_PROBE}, its returned logits are not its head's output times a product of the config's "
        f"logit factors {factors or '(none)'}, softcapped by one of {softcaps or '(none)'} or "
        "not); crossent refuses it rather than compute another loss"
    )


def probe_loss_returned(fn: str, model: nn.Module, loss: object) -> None:
    if not (torch.is_tensor(loss) and loss.numel() == 1):
        raise Unsupported(_refused(fn, model, f"returned no loss for the labels of {_PROBE}"))


def probe_aux_without_labels(fn: str, model: nn.Module, with_labels: torch.Tensor,
                             without: torch.Tensor | None) -> None:
    """The patched forward runs the model without labels: its aux_loss must be the same there."""
    if without is None or not torch.allclose(without.detach().double().cpu(),
                                             with_labels.detach().double().cpu(), rtol=1e-3, atol=1e-6):
        raise Unsupported(_refused(
            fn, model, "returns a different aux_loss (or none) without labels, where crossent's "
            "patched forward runs it"))


def probe_loss_unknown(fn: str, model: nn.Module, loss: float, shifted: float, given: float,
                       aux: float | None, coefficients: dict[str, float]) -> NoReturn:
    terms = "" if aux is None else (
        f", plus c * aux_loss (aux_loss {aux:.6g}, c one of {coefficients or 'none found'})")
    raise Unsupported(_refused(
        fn, model, f"computes a loss crossent does not reproduce: on {_PROBE} it returned "
        f"{loss:.6g}, where the mean cross-entropy of its logits is {shifted:.6g} with the labels "
        f"shifted (causal-LM loss) and {given:.6g} with the labels as given{terms}"))


def probe_loss_kwargs(fn: str, model: nn.Module, loss: float, summed: float, unchanged: float) -> NoReturn:
    raise Unsupported(_refused(
        fn, model, f"uses shift_labels and num_items_in_batch in a way crossent does not reproduce: "
        f"on {_PROBE} its loss was {loss:.6g}, where using both gives {summed:.6g} and ignoring "
        f"both {unchanged:.6g}"))
