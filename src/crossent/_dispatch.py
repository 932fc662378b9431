"""Which implementation runs a call. The rule is written here and nowhere else.

Backends (``Backend``):
  fused      crossent's own chunked kernels (backends/torch_chunked.py): loss and gradient in one
             pass, deterministic. The default.
  reference  the float64 formulas of reference.py through autograd: slow and memory-hungry, but
             differentiable in every argument torch differentiates.

Rule, per call:
  1. a forced backend wins: ``crossent.use_backend(name)`` (a context manager) or the environment
     variable ``CROSSENT_BACKEND`` (read at call time, never at import);
  2. gradients that the fused kernels do not produce (w.r.t. class weights, probability targets,
     BCE targets/weights, pos_weight), when autograd will ask for them: reference;
  3. otherwise: fused.
"""

from __future__ import annotations

import contextlib
import enum
import os

import torch


class Backend(str, enum.Enum):
    FUSED = "fused"
    REFERENCE = "reference"


_forced: Backend | None = None


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Force every crossent loss inside the ``with`` block onto one backend (tests, debugging)."""
    global _forced
    previous, _forced = _forced, _parse(name, "use_backend")
    try:
        yield
    finally:
        _forced = previous


def _parse(name, where: str) -> Backend:
    try:
        return Backend(name)
    except ValueError:
        names = ", ".join(repr(b.value) for b in Backend)
        raise ValueError(f"{where}: backend must be one of {names}, got {name!r}") from None


def _forced_backend() -> Backend | None:
    if _forced is not None:
        return _forced
    env = os.environ.get("CROSSENT_BACKEND")
    return _parse(env, "CROSSENT_BACKEND") if env else None


def select(*needs_grad_beyond_input: torch.Tensor | None) -> Backend:
    """Pick the backend for one call; the tensors are those whose gradient only `reference` gives."""
    forced = _forced_backend()
    if forced is not None:
        return forced
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in needs_grad_beyond_input):
        return Backend.REFERENCE
    return Backend.FUSED
