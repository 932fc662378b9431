"""Why crossent replaces torch's "auto" chunking: crossent.linear_cross_entropy forward+backward
(CPU, float32) with crossent's own chunk rule vs the rows per chunk the installed torch resolves
``LinearCrossEntropyOptions()`` to (torch 2.13: ``aspect_ratio:2`` for float32 CPU; torch 2.14:
``aspect_ratio``, capped at its reference peak; pytorch PR #187838).

Usage:  python -m benchmarks.bench_auto_chunks [--n 2048] [--d 512] [--v 32000] [--rounds 3]

Both cases run crossent's fused kernel (same values); only the chunk size differs. Interleaved
rounds, the minimum of each case, and the ratio to crossent's rule within this run. Needs
torch >= 2.13 (the options class and its ``_adjust``, torch's own resolution).
"""

from __future__ import annotations

import argparse
import time

import torch

import crossent


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("n", 2048), ("d", 512), ("v", 32000), ("rounds", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    n, d, v = args.n, args.d, args.v
    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        raise SystemExit(f"torch {torch.__version__} has no LinearCrossEntropyOptions (torch >= 2.13)")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, requires_grad=True)
    w = (torch.randn(v, d, generator=gen) * d**-0.5).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    options = torch.nn.LinearCrossEntropyOptions()
    torch_rows = options._adjust(n, d, v, torch.float32, torch.device("cpu")).batch_chunk_size
    cases = {"crossent's rule (options=LinearCrossEntropyOptions())": dict(options=options),
             f"torch's auto: chunk_size={torch_rows}": dict(chunk_size=torch_rows)}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, kw in cases.items():
            start = time.perf_counter()
            torch.autograd.grad(crossent.linear_cross_entropy(x, w, t, **kw), (x, w))
            best[name] = min(best[name], time.perf_counter() - start)
    base = best[next(iter(cases))]
    print(f"torch {torch.__version__}, N={n} D={d} V={v}, {torch.get_num_threads()} threads, "
          f"min of {args.rounds} interleaved rounds\n")
    print("| case | time (s) | vs crossent's rule |\n|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
