"""The fused CPU loop with and without its single-threaded workers, beside torch, on a busy CPU.

Usage:  python -m benchmarks.bench_workers [--n 4096] [--c 32000] [--rounds 5] [--busy 0,2,4]

Per round, one forward+backward each of torch's cross_entropy, crossent's with its chunks in the
calling thread ("serial": every op of every chunk is one parallel region, the loop before issue 25)
and crossent's as shipped ("workers": backends/chunked/workers.py), each on a fresh input, while k
spinning processes (started and stopped here) load the cores. Prints the medians, min-max and the
ratio of medians to torch's; results are bitwise the same in both crossent modes (tested in
tests/backends/chunked/test_workers.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import crossent
from crossent.backends.chunked import workers

from ._harness import machine
from .bench_training_loop import _Busy


def _serial(fn, items, device, **_):
    return workers.in_calling_thread(fn, items)


def _step(name: str, n: int, c: int) -> float:
    x = torch.randn(n, c, requires_grad=True)
    t = torch.randint(0, c, (n,))
    shipped = workers.map_chunks
    if name == "serial":
        workers.map_chunks = _serial
    try:
        start = time.perf_counter()
        loss = F.cross_entropy(x, t) if name == "torch" else crossent.cross_entropy(x, t)
        loss.backward()
        return time.perf_counter() - start
    finally:
        workers.map_chunks = shipped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--c", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--busy", default="0,2,4")
    args = ap.parse_args()
    print(f"cross_entropy forward+backward {args.n} x {args.c}, fresh inputs; {machine()}")
    print("| busy | torch (ms) | serial (ms) | workers (ms) | serial / torch | workers / torch |")
    print("|---|---|---|---|---|---|")
    for k in (int(v) for v in args.busy.split(",")):
        times = {"torch": [], "serial": [], "workers": []}
        with _Busy(k):
            for _ in range(args.rounds):
                for name in times:
                    times[name].append(_step(name, args.n, args.c))
        med = {name: statistics.median(v) for name, v in times.items()}
        cells = [f"{1e3 * med[nm]:.0f} [{1e3 * min(times[nm]):.0f}-{1e3 * max(times[nm]):.0f}]" for nm in times]
        print(f"| {k} | " + " | ".join(cells)
              + f" | {med['serial'] / med['torch']:.2f} | {med['workers'] / med['torch']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
