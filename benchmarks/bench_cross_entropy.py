"""Cross-entropy forward+backward on CPU float32: crossent vs torch eager vs torch.compile.

Usage:  python -m benchmarks.bench_cross_entropy [--n 4096] [--c 32000] [--rounds 5] [--quick]

Prints one markdown table: min time over the rounds (interleaved in one process), the ratio to
torch eager, and the peak extra memory of each case measured in a fresh subprocess, as a multiple
of the logits' size. Targets (issue 2): time <= 0.5x eager; memory <= 1.1x the logits;
with inplace_backward <= 0.1x.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import crossent

from ._harness import (
    interleaved_min_seconds,
    machine,
    measure_here,
    peak_extra_bytes,
    report_measure,
)

_compiled = None


def _torch_compile_ce(x, t):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(F.cross_entropy)
    return _compiled(x, t)


def make_inputs(n: int, c: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen)
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


def step(name: str, x: torch.Tensor, t: torch.Tensor):
    """One forward+backward of case `name` on leaf logits x; returns the gradient."""
    if name == "crossent (inplace_backward)":
        work = x.detach()  # the logits are destroyed: in a model they are a temporary anyway
        leaf = work.requires_grad_()
        logits = leaf.view_as(leaf)  # non-leaf alias, as logits coming out of a model
        crossent.cross_entropy(logits, t, inplace_backward=True).backward()
        return leaf.grad
    x = x.detach().requires_grad_()
    loss_fn = {
        "torch eager": F.cross_entropy,
        "torch.compile": _torch_compile_ce,
        "crossent": crossent.cross_entropy,
    }[name]
    loss_fn(x, t).backward()
    return x.grad


CASES = ["torch eager", "torch.compile", "crossent", "crossent (inplace_backward)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--c", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shape, 3 rounds (a smoke run)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.c, args.rounds = 512, 8000, 3
    if args.measure:
        # The logits are inputs; the gradient the case returns counts as extra memory. The
        # in-place case destroys its logits in the warm-up run: their values do not matter here.
        inputs = lambda: make_inputs(args.n, args.c)
        report_measure(measure_here(inputs, lambda xt: step(args.measure, xt[0], xt[1])))
        return
    cases = [c for c in CASES if not (args.no_compile and c == "torch.compile")]
    x, t = make_inputs(args.n, args.c)
    inplace_src = x.clone()

    def timed(name):
        if name != "crossent (inplace_backward)":
            return lambda: step(name, x, t)

        def restore_then_run():  # restoring the destroyed logits (~36 ms here) is timed too
            inplace_src.copy_(x)
            return step(name, inplace_src, t)

        return restore_then_run

    # Correctness guard: every case computes the same gradient before anything is timed.
    ref = step("torch eager", x, t)
    for name in cases:
        torch.testing.assert_close(timed(name)(), ref, rtol=1e-4, atol=1e-7)

    best = interleaved_min_seconds({name: timed(name) for name in cases}, args.rounds)
    logits_bytes = x.numel() * x.element_size()
    print(f"cross_entropy forward+backward, N={args.n}, C={args.c}, float32, CPU; {machine()}")
    print(f"logits: {logits_bytes / 2**20:.0f} MiB; min of {args.rounds} interleaved rounds\n")
    print("| case | time (ms) | vs torch eager | peak extra memory (MiB) | x logits |")
    print("|---|---|---|---|---|")
    for name in cases:
        mem = peak_extra_bytes("benchmarks.bench_cross_entropy", name, "--n", str(args.n), "--c", str(args.c))
        ratio = best[name] / best["torch eager"]
        print(f"| {name} | {best[name] * 1e3:.0f} | {ratio:.2f}x | {mem / 2**20:.0f} | {mem / logits_bytes:.2f} |")


if __name__ == "__main__":
    main()
