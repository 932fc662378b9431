"""The crossover sweep of benchmarks/bench_gpu.py: crossent's Triton kernels forced against
torch's, forward+backward, over 0.26M-268M elements, to set the dispatch thresholds
(backends/triton/__init__.py: TRITON_MIN_NUMEL, below which inputs go to torch's kernels).

  cross_entropy                    C = 4096 (one-block rows) and 128256 (the loop), float32 and
                                   bfloat16, N = numel / C rows
  binary_cross_entropy_with_logits (N, 1000), float32 and bfloat16

`suggest` reads a threshold off the wall times (what the dispatch decides on): the smallest size
from which Triton is at least as fast as torch at every larger size of every case of the family.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import crossent

from ._gpu_timing import gpu_ms, time_ms

SIZES = [1 << k for k in range(18, 29, 2)]  # 0.26M, 1M, 4M, 16.8M, 67M, 268M elements
SMOKE_SIZES = [64, 256]


def _ce_step(x, t, backend):
    def step():
        x.grad = None
        with crossent.use_backend(backend):
            crossent.cross_entropy(x, t).backward()

    return step


def _bce_step(x, y, backend):
    def step():
        x.grad = None
        with crossent.use_backend(backend):
            crossent.binary_cross_entropy_with_logits(x, y).backward()

    return step


def _cases(smoke: bool):
    sizes = SMOKE_SIZES if smoke else SIZES
    for dtype in (torch.float32, torch.bfloat16):
        for c in ((4096, 128256) if not smoke else (16, 40)):
            for numel in sizes:
                yield "cross_entropy", dtype, c, max(1, numel // c)
        for numel in sizes:
            yield "bce_with_logits", dtype, 1000 if not smoke else 8, max(1, numel // (1000 if not smoke else 8))


def run(dev, smoke: bool, deadline: float, emit) -> list:
    """Every case, both backends; ``emit(row)`` as each is measured. Cases past ``deadline``
    (time.monotonic()) are skipped."""
    out = []
    for family, dtype, c, n in _cases(smoke):
        row = {"family": family, "case": f"{n}x{c} {str(dtype)[6:]}", "numel": n * c}
        if time.monotonic() > deadline:
            row["error"] = "skipped: over the time budget"
            emit(row)
            out.append(row)
            continue
        gen = torch.Generator(device=dev).manual_seed(0)
        x = (torch.randn(n, c, device=dev, generator=gen) * 2).to(dtype).requires_grad_()
        if family == "cross_entropy":
            t = torch.randint(0, c, (n,), device=dev, generator=gen)
            steps = {b: _ce_step(x, t, b) for b in ("triton", "torch")}
        else:
            y = torch.rand(n, c, device=dev, generator=gen).to(dtype)
            steps = {b: _bce_step(x, y, b) for b in ("triton", "torch")}
        try:
            for b, step in steps.items():
                row[f"{b}_ms"] = time_ms(step, dev, reps=10 if not smoke else 2, warmup=2 if not smoke else 1)
                row[f"{b}_gpu_ms"] = gpu_ms(step, dev, row[f"{b}_ms"])
            row["ratio"] = row["triton_ms"] / row["torch_ms"]
        except Exception as e:  # a failing case is a row with its error, never a lost sweep
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        del x
        emit(row)
        out.append(row)
    return out


def suggest(rows: list, family: str) -> int | None:
    """The smallest numel at which Triton (wall time) is no slower than torch there and at every
    larger size of every case of ``family``; None when no measured size qualifies."""
    measured = [r for r in rows if r["family"] == family and "ratio" in r]
    if not measured:
        return None
    for numel in sorted({r["numel"] for r in measured}):
        if all(r["ratio"] <= 1.0 for r in measured if r["numel"] >= numel):
            return numel
    return None


def reference_check(dev) -> None:
    """A cheap guard that the forced backends compute the same loss (the sweep times, it does not
    test: a wrong kernel here would make its figures meaningless)."""
    x = torch.randn(4, 40, device=dev)
    t = torch.randint(0, 40, (4,), device=dev)
    with crossent.use_backend("triton"):
        ours = crossent.cross_entropy(x, t)
    torch.testing.assert_close(ours, F.cross_entropy(x, t), rtol=1e-5, atol=1e-5)
