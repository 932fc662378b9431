"""The sweep: every causal-LM class of the installed transformers (``hf_zoo``), patched or refused.

For each class: a tiny random model and its twin (a deep copy: the same weights), the twin
patched, then two training steps (a forward with labels and a backward) of each: the first on
crossent's fused kernels (forced), the second as the dispatch sends these small problems (to
torch's composition), every RNG reseeded before each forward (dropout draws the same masks). The
class is

* ``supported`` -- ``patch`` accepted it, ``is_patched`` says so, and the loss and every
  parameter's gradient equal the unpatched model's (float32, ``_close``);
* ``refused`` -- ``patch`` raised crossent's ``Unsupported`` (the reason is kept) and left the
  model unpatched (``is_patched`` False, no forward installed);
* ``not built`` -- no tiny model of it could be made, or (patch having accepted it) the unpatched
  model itself fails on the sweep's plain input (the reason is kept);
* ``wrong`` -- anything else: an error at the first patched step, another error from ``patch``,
  or a different number. The sweep test requires none.

``sweep()`` runs once per process and selection (cached), in this process, on one thread: these tiny ops take
~0.02 s a step on one thread and 0.5 s on two when the machine's cores are busy (measured here,
load 8 on 2 cores: OpenMP's workers wait for each other).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import random
import time
import warnings

import hf_zoo
import numpy
import torch

import crossent

ATOL, RTOL = 1e-6, 2e-5
BACKENDS = ("fused", None)  # crossent's fused kernels (forced), then the dispatch's own choice
BATCH, TIME = 2, 8


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    outcome: str  # "supported", "refused", "not built" or "wrong"
    reason: str = ""
    seconds: float = 0.0


def batch(model) -> dict:
    """input_ids (2, 8) and labels with a masked prompt in row 0 and masked padding in row 1;
    use_cache=False where the forward takes it (a training step builds no cache)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, hf_zoo.VOCAB, (BATCH, TIME), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, -2:] = -100
    inputs = dict(input_ids=ids, labels=labels)
    if "use_cache" in inspect.signature(type(model).forward).parameters:
        inputs["use_cache"] = False
    return inputs


def _step(model, inputs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # and NumPy's (BigBird's random attention blocks), Python's
    numpy.random.seed(2)
    random.seed(2)
    loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """|got - want| <= ATOL + RTOL * max|want| elementwise: float32 rounding of the tensor's own
    scale (an elementwise rtol fails on the near-zero entries of a large-scale gradient, e.g.
    RWKV's embedding gradient of scale 477), yet a missed softcap of 30 (~1e-4) shows."""
    return bool((got - want).abs().max() <= ATOL + RTOL * want.abs().max())


def _compare(loss, grads, want_loss, want_grads) -> str:
    """'' if equal, else what differs."""
    if not _close(loss, want_loss):
        return f"loss {loss.item():.7g} patched vs {want_loss.item():.7g} unpatched"
    if grads.keys() != want_grads.keys():
        return f"gradients of {sorted(set(grads) ^ set(want_grads))[:3]} only on one side"
    for name in want_grads:
        if not _close(grads[name], want_grads[name]):
            diff = (grads[name] - want_grads[name]).abs().max().item()
            return f"gradient of {name} differs by {diff:.3g} (max |g| {want_grads[name].abs().max():.3g})"
    return ""


def run_class(name: str) -> Result:
    from crossent._checks.integrations import Unsupported
    from crossent.integrations import transformers as hf

    start = time.perf_counter()

    def result(outcome: str, reason: str = "") -> Result:
        return Result(name, outcome, reason, time.perf_counter() - start)

    try:
        model = hf_zoo.build(name)
    except hf_zoo.NotBuilt as exc:
        return result("not built", str(exc))
    twin = copy.deepcopy(model)
    try:
        hf.patch(twin)
    except Unsupported as exc:
        if hf.is_patched(twin) or "forward" in vars(twin):
            return result("wrong", f"refused, yet left patched: {exc}")
        return result("refused", str(exc))
    except Exception as exc:  # noqa: BLE001 - patch must refuse with Unsupported, nothing else
        return result("wrong", f"patch raised {type(exc).__name__}: {exc}")
    if not hf.is_patched(twin):
        return result("wrong", "patch accepted it, yet is_patched is False")
    inputs = batch(model)
    # Step k of the patched twin against step k of the model: forwards may change a model's state
    # (BigBird switches its attention at its first forward).
    for backend in BACKENDS:
        try:
            want_loss, want_grads = _step(model, inputs)
        except Exception as exc:  # noqa: BLE001 - the model's own failure on this input
            return result("not built", f"unpatched forward: {type(exc).__name__}: {str(exc)[:160]}")
        try:
            with crossent.use_backend(backend) if backend else contextlib.nullcontext():
                loss, grads = _step(twin, inputs)
        except Exception as exc:  # noqa: BLE001 - never an error at the first step
            route = backend or "dispatch"
            return result("wrong", f"patched step ({route}) raised {type(exc).__name__}: {exc}")
        diff = _compare(loss, grads, want_loss, want_grads)
        if diff:
            return result("wrong", f"{diff} ({backend or 'dispatch'})")
    return result("supported")


@functools.lru_cache(maxsize=2)
def sweep(names: tuple[str, ...] | None = None) -> tuple[Result, ...]:
    """run_class of each of ``names`` (default: every class of hf_zoo.classes()), in order."""
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' deprecation and init notices
            for name in hf_zoo.classes() if names is None else names:
                results.append(run_class(name))
    finally:
        torch.set_num_threads(threads)
    return tuple(results)
