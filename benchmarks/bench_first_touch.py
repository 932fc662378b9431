"""What a fresh N x C buffer costs a training step, and what crossent's buffer cache saves.

Usage:  python -m benchmarks.bench_first_touch [--rounds 9] [--n 4096] [--c 32000]

1. First touch: ``torch.empty(N, C).fill_(1)`` on fresh memory (another N x C allocation made and
   freed in between, as a model's step does), plain and advised MADV_HUGEPAGE
   (`backends/_memory._advised`), against a second fill of the same (now resident) tensor.
2. The loss inside bench_training_loop's 'ce' step (a Linear(64, C) head makes fresh logits each
   step; the loss's forward+backward timed), interleaved per round: torch, crossent with its buffer
   cache, crossent with the cache off (every step a fresh gradient, advised to huge pages).
Medians and min-max over the rounds; ratios to torch within each round's median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import crossent
from crossent.backends import _memory

from ._harness import machine


def first_touch(n: int, c: int, rounds: int) -> dict:
    out = {"plain": [], "huge pages": [], "resident": []}
    for _ in range(rounds):
        for mode in ("plain", "huge pages"):
            other = torch.empty(n, c).fill_(0)  # other large allocations between, as in a step
            del other
            start = time.perf_counter()
            t = torch.empty(n, c)
            if mode == "huge pages":
                _memory._advised(t, t.numel() * t.element_size())
            t.fill_(1.0)
            out[mode].append(time.perf_counter() - start)
            start = time.perf_counter()
            t.fill_(2.0)
            if mode == "plain":
                out["resident"].append(time.perf_counter() - start)
            del t
    return out


def loop(n: int, c: int, rounds: int) -> dict:
    from .bench_training_loop import _Case

    case = _Case("ce")
    if (n, c) != (4096, 32000):
        case.model = torch.nn.Linear(64, c)
        case.x, case.t = torch.randn(n, 64), torch.randint(0, c, (n,))
        case.opt = torch.optim.SGD(case.model.parameters(), lr=1e-3)
    times = {"torch": [], "crossent (cache)": [], "crossent (no cache)": []}

    def one(name):
        enabled = _memory._ENABLED
        _memory._ENABLED = name != "crossent (no cache)"
        try:
            return case.step("torch" if name == "torch" else "crossent")
        finally:
            _memory._ENABLED = enabled

    for name in times:  # warm-up
        one(name)
    for _ in range(rounds):
        for name in times:
            times[name].append(one(name))
    crossent.empty_cache()
    return times


def _row(name, ts, ref=None):
    med = statistics.median(ts)
    ratio = f" {med / statistics.median(ref):.2f} |" if ref else ""
    return f"| {name} | {1e3 * med:.0f} | {1e3 * min(ts):.0f}-{1e3 * max(ts):.0f} |{ratio}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--c", type=int, default=32000)
    args = ap.parse_args()
    print(f"# {machine()}; N x C = {args.n} x {args.c} float32 ({args.n * args.c * 4 / 1e6:.0f} MB)")
    ft = first_touch(args.n, args.c, args.rounds)
    print("\n| fill of an N x C tensor | median (ms) | min-max (ms) |\n|---|---|---|")
    for name, label in (("plain", "fresh memory"), ("huge pages", "fresh memory, MADV_HUGEPAGE"),
                        ("resident", "already resident (second fill)")):
        print(_row(label, ft[name]))
    lp = loop(args.n, args.c, args.rounds)
    print("\n| loss in a training step | median (ms) | min-max (ms) | vs torch |\n|---|---|---|---|")
    for name, ts in lp.items():
        print(_row(name, ts, lp["torch"]))


if __name__ == "__main__":
    main()
