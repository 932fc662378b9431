"""Timing and memory of one GPU case (benchmarks/bench_gpu.py), and the floors the cases are set
against. Every function also runs on the CPU (the script's smoke mode): there the device-only
figures are nan.

Two times per case, both the median over repeats of one call (forward+backward):
  ms       wall time with the host in the loop: CUDA events around each call, as a training loop
           sees it (launch overhead and any host sync included);
  gpu_ms   device time alone: the repeats are queued behind a sleep kernel long enough for the host
           to enqueue all of them, so they run back to back and the events around the batch see
           only the device's work (a call that syncs the host cannot be queued ahead: its gpu_ms
           then shows the gaps, which is how a hidden sync shows up).
"""

from __future__ import annotations

import statistics
import time

import torch


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, dev, reps=20, warmup=3) -> float:
    """Median wall ms of fn() (CUDA events on a GPU; perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


# cycles of torch.cuda._sleep per ms of sleep, at a conservative 1 GHz (an H200 runs at up to
# 1.98 GHz: the sleep is then shorter than asked, hence the factor 3 below)
_CYCLES_PER_MS = 1_000_000


def gpu_ms(fn, dev, host_ms: float, reps=10) -> float:
    """Device ms per call of fn(), host overhead excluded (the module docstring); nan off CUDA.
    host_ms: the wall time of one call, to size the sleep that hides the enqueueing."""
    if dev.type != "cuda":
        return float("nan")
    sync(dev)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(max(1.0, 3 * host_ms * reps) * _CYCLES_PER_MS))
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def peak_mib(fn, dev) -> float:
    """Peak memory one call allocates beyond what is held before it (MiB); nan off CUDA."""
    if dev.type != "cuda":
        return float("nan")
    sync(dev)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(dev)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def bandwidth_floor(dev, numel, dtype) -> float:
    """Bytes/s of a device copy (read + write): the floor a memory-bound kernel is set against."""
    x = torch.empty(numel, dtype=dtype, device=dev).normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), dev)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def matmul_peak(dev, n) -> float:
    """FLOP/s of an n^3 product (bfloat16 on a GPU)."""
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    b = torch.randn_like(a)
    ms = time_ms(lambda: a @ b, dev, reps=10)
    return 2 * n**3 / (ms * 1e-3)


def measure(row: dict, step, dev, reps: int, warmup: int = 3) -> None:
    """Fill row's ms, gpu_ms and peak_MiB for one forward+backward ``step``."""
    row["ms"] = time_ms(step, dev, reps=reps, warmup=warmup)
    row["gpu_ms"] = gpu_ms(step, dev, row["ms"])
    row["peak_MiB"] = peak_mib(step, dev)
