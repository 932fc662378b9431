"""Which implementation runs a call. The rule is written here and nowhere else.

Backends (``Backend``):
  fused      crossent's own chunked kernels (backends/torch_chunked.py): loss and gradient in one
             pass, gradient-sized memory only, deterministic.
  torch      torch's own kernel (torch.nn.functional), for small CPU inputs where a Python-level
             fused path cannot win: there, Python dispatch is the whole cost (~70 us for torch's
             forward+backward at 64 x 10). Used only for options torch has, where it is exact.
  reference  the float64 formulas of reference.py through autograd: slow, differentiable in
             every argument torch differentiates.

Rule, per call:
  1. a forced backend wins: ``crossent.use_backend(name)`` (a context manager), or the environment
     variable ``CROSSENT_BACKEND`` (read once when crossent is imported, validated at the first
     call: a per-call os.environ lookup costs more than torch's whole loss at 8 x 2), except that a forced
     'fused' never drops a gradient it cannot give (rule 3 applies first);
  2. torch, when the input is on the CPU, no crossent-only option is on (z_loss, softcap,
     inplace_backward), and its numel is at most TORCH_MAX_NUMEL (TORCH_MAX_NUMEL_NO_GRAD when no
     gradient will be needed; BINARY_* for the binary losses). The thresholds are the crossovers
     measured by benchmarks/bench_shapes.py on the reference machine (2-core AMD EPYC, torch 2.13):
     below them torch's row-fused C++ kernels beat any Python-level chunk loop, above them its
     fresh N x C temporaries (page faults) cost more than crossent's single pass.
     Determinism is kept: torch's class-index kernels reduce rows and the batch in a fixed order
     (checked for 1-4 threads by tests/backends/test_torch_chunked.py); where torch ends in a
     thread-dependent full sum (probability targets, the binary losses), functional.py asks torch
     for reduction='none' and sums in crossent's fixed order;
     linear_cross_entropy: the composition F.linear + cross_entropy when the input is on the CPU,
     neither z_loss nor softcap is on, and N * V <= LINEAR_TORCH_MAX_LOGITS;
  3. reference, when autograd will ask for a gradient the fused kernels do not produce (class
     weights, probability targets, BCE targets);
  4. otherwise fused.
"""

from __future__ import annotations

import contextlib
import enum
import os

import torch


class Backend(str, enum.Enum):
    FUSED = "fused"
    TORCH = "torch"
    REFERENCE = "reference"


# Crossovers (elements of the input), measured with benchmarks/bench_shapes.py.
# 2 threads, float32, fused/torch time (2026-11-23):
#   forward+backward  0.52M elements 1.41, 1.05M 0.90, 2.05M 0.77, 16.4M 0.40
#   forward only      8.2M 1.51, 16.4M 0.55, 32.8M 0.50
TORCH_MAX_NUMEL = 3 << 18  # 786K
TORCH_MAX_NUMEL_NO_GRAD = 3 << 22  # 12.6M
BINARY_TORCH_MAX_NUMEL = 1 << 22  # BCE-with-logits fused/torch: 0.41M 1.16, 1.05M 1.18, 4.2M 0.96

# linear_cross_entropy: at most this many logits (N * V) on the CPU, the composition F.linear +
# cross_entropy (its logits, 4 MiB in float32, are then smaller than the one 16 MiB chunk the fused
# path would allocate anyway). Fused/composed forward+backward, float32, D=128 (2026-11-23):
# 640 logits 2.44, 0.26M 1.07, 0.51M 1.11, 1.0M 1.03, 2.1M 0.83-0.97, 4.2M 0.94-1.01, 8.4M 0.60.
LINEAR_TORCH_MAX_LOGITS = 1 << 20

_forced: Backend | None = None
_ENV_BACKEND = os.environ.get("CROSSENT_BACKEND") or None


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Force every crossent loss inside the ``with`` block onto one backend (tests, debugging).

    ``torch`` is honoured only where torch has the requested options; elsewhere the call runs on
    ``fused``.
    """
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


def forced() -> Backend | None:
    if _forced is not None:
        return _forced
    return _parse(_ENV_BACKEND, "CROSSENT_BACKEND") if _ENV_BACKEND else None


_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled


def torch_first(input: object, *, binary: bool = False) -> bool:
    """Rule 2 (the caller has checked that no crossent-only option is on).

    On the path of every small call: written for speed (a few hundred nanoseconds).
    """
    if _forced is not None or _ENV_BACKEND:
        return forced() is Backend.TORCH
    if not isinstance(input, _Tensor) or not input.is_cpu:
        return False
    if binary:
        return input.numel() <= BINARY_TORCH_MAX_NUMEL
    if input.requires_grad and _grad_enabled():
        return input.numel() <= TORCH_MAX_NUMEL
    return input.numel() <= TORCH_MAX_NUMEL_NO_GRAD


def linear_torch_first(input: torch.Tensor, num_logits: int) -> bool:
    """Rule 2 for linear_cross_entropy (options checked by the caller): the unfused composition
    F.linear + cross_entropy for small CPU problems, where the fused loop's Python cost dominates."""
    f = forced()
    if f is not None:
        return f is Backend.TORCH
    return input.is_cpu and num_logits <= LINEAR_TORCH_MAX_LOGITS


def select(*needs_grad_beyond_input: torch.Tensor | None) -> Backend:
    """Rules 1, 3, 4 for calls that did not go to torch.

    A gradient the fused kernels cannot give is never dropped: rule 3 beats a forced 'fused'.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in needs_grad_beyond_input):
        return Backend.REFERENCE
    f = forced()
    return f if f is not None and f is not Backend.TORCH else Backend.FUSED
