"""What a small call costs above torch's own kernels: crossent's dispatch against torch's wrappers.

Usage:  python -m benchmarks.bench_dispatch [--rounds 30]

At these sizes both sides run torch's kernels (rule 2), so the difference is Python: rule 2's
tests, crossent's option tests and the signature. Three measurements, each interleaved in one
process:
  - tight loop: 2000 forward calls (with a gradient) of cross_entropy at (64, 10), each call's
    cost above torch's kernel called directly, minimum over rounds: F.cross_entropy,
    crossent.cross_entropy;
  - in a training step: the forward of the loss between a small MLP's forward and backward
    (colder caches, as users call it), F vs crossent, medians over rounds of 400 steps each;
  - the tiny linear call (64, 32) x 10 without a gradient, above torch's two kernels: F.linear +
    F.cross_entropy, and crossent.linear_cross_entropy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import crossent

from ._harness import machine

_KERNEL = torch._C._nn.cross_entropy_loss
_LINEAR = torch._C._nn.linear


def _min_per_call(fns: dict, rounds: int, calls: int = 2000) -> dict:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def tight_loop(rounds: int) -> dict:
    x, t = torch.randn(64, 10, requires_grad=True), torch.randint(0, 10, (64,))
    return _min_per_call({
        "kernel": lambda: _KERNEL(x, t, None, 1, -100, 0.0),
        "F.cross_entropy": lambda: F.cross_entropy(x, t),
        "crossent.cross_entropy": lambda: crossent.cross_entropy(x, t),
    }, rounds)


def in_step(rounds: int, steps: int = 400) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    x, t = torch.randn(64, 32), torch.randint(0, 10, (64,))
    fns = {"F.cross_entropy": F.cross_entropy, "crossent.cross_entropy": crossent.cross_entropy}
    names = list(fns)
    per_round = {k: [] for k in fns}
    for r in range(rounds):
        total = dict.fromkeys(fns, 0.0)
        for s in range(steps):
            for name in (names if (r + s) % 2 == 0 else names[::-1]):
                leaf = model(x).detach().requires_grad_()
                start = time.perf_counter()
                loss = fns[name](leaf, t)
                total[name] += time.perf_counter() - start
                loss.backward()
        for name in fns:
            per_round[name].append(total[name] / steps)
    return {name: statistics.median(v) for name, v in per_round.items()}


def tiny_linear(rounds: int) -> dict:
    x, w, t = torch.randn(64, 32), torch.randn(10, 32), torch.randint(0, 10, (64,))
    with torch.no_grad():
        return _min_per_call({
            "kernels": lambda: _KERNEL(_LINEAR(x, w, None), t, None, 1, -100, 0.0),
            "F.linear + F.cross_entropy": lambda: F.cross_entropy(F.linear(x, w), t),
            "crossent.linear_cross_entropy": lambda: crossent.linear_cross_entropy(x, w, t),
        }, rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    print(f"# {machine()}\n")
    tight = tight_loop(args.rounds)
    print("cross_entropy (64, 10), forward with a gradient, tight loop: us per call above torch's kernel")
    for name, s in tight.items():
        print(f"  {name:32s} {1e6 * (s - tight['kernel']):6.3f}")
    step = in_step(max(5, args.rounds // 2))
    print("cross_entropy (64, 10) forward inside a training step: median us per call")
    for name, s in step.items():
        print(f"  {name:32s} {1e6 * s:6.3f}  ({1e6 * (s - step['F.cross_entropy']):+.3f} vs F)")
    lin = tiny_linear(args.rounds)
    print("linear_cross_entropy (64, 32) x 10, no gradient: us per call above torch's two kernels")
    for name, s in lin.items():
        print(f"  {name:32s} {1e6 * (s - lin['kernels']):6.3f}")


if __name__ == "__main__":
    main()
