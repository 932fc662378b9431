"""Linear cross-entropy forward+backward on CPU float32: crossent vs torch vs the floor.

Usage:  python -m benchmarks.bench_linear_cross_entropy [--n 2048] [--d 512] [--v 128256]
                                                        [--rounds 3] [--quick] [--no-compile]

Cases, timed side by side in one process (interleaved rounds; harness in _harness.py). Each case's
minimum over rounds is printed, and its ratio to the floor both as min/min and as the median over
rounds of the ratio within one round (crossent runs right before the floor in every round):
  crossent       crossent.linear_cross_entropy(h, W, t)
  torch eager    F.cross_entropy(h @ W.T, t)
  torch.compile  torch.compile of the same function
  torch native   F.linear_cross_entropy(h, W, t, options=torch.nn.LinearCrossEntropyOptions())
                 (torch >= 2.13; skipped when absent)
  floor          the three products alone: h @ W.T, g @ W, g.T @ h, into preallocated outputs
Each case returns the gradients w.r.t. h and W (torch.autograd.grad, so nothing accumulates).

Peak extra memory of each case: a fresh subprocess builds the inputs, runs the case once, resets
the peak-RSS counter, runs it again and reports VmHWM - VmRSS before (the gradients included; the
floor's outputs are preallocated inputs, so its figure is only the products' workspace). Then a
sweep over V (32000, 128256, 256000) of crossent's peak extra memory beside V*D and N*V, and one
over N (N/2, N, 2N at V=32000): the peak follows V*D and does not move with N.

Targets (issue 3): time <= 1.2x the floor; peak extra memory <= 0.25x torch eager's and no more
than torch native's. Prints markdown tables.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import crossent

from ._harness import (
    interleaved_seconds,
    machine,
    measure_here,
    paired_median_ratio,
    peak_extra_bytes,
    report_measure,
)

MODULE = "benchmarks.bench_linear_cross_entropy"
SWEEP_V = (32000, 128256, 256000)
_compiled = None


def _eager(h, w, t):
    return F.cross_entropy(h @ w.T, t)


def _compile(h, w, t):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_eager)
    return _compiled(h, w, t)


def _native(h, w, t):
    return F.linear_cross_entropy(h, w, t, options=torch.nn.LinearCrossEntropyOptions())


LOSSES = {
    "crossent": crossent.linear_cross_entropy,
    "torch eager": _eager,
    "torch.compile": _compile,
    "torch native": _native,
}


def has_native() -> bool:
    return hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")


def make_inputs(n: int, d: int, v: int, floor: bool = False):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen) / d**0.5
    w = torch.randn(v, d, generator=gen)
    t = torch.randint(0, v, (n,), generator=gen)
    # The floor's preallocated outputs: logits (reused as g), grad h, grad W.
    outs = (torch.empty(n, v), torch.empty(n, d), torch.empty(v, d)) if floor else None
    return h, w, t, outs


def step(name: str, inputs):
    """One forward+backward of case `name`; returns (grad h, grad W)."""
    h, w, t, outs = inputs
    if name == "floor":
        z, gh, gw = outs
        torch.mm(h, w.t(), out=z)
        torch.mm(z, w, out=gh)
        torch.mm(z.t(), h, out=gw)
        return gh, gw
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()
    return torch.autograd.grad(LOSSES[name](h, w, t), (h, w))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=512, D=256, V=32000; sweep at N=1024, D=128: a smoke run")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--no-sweep", action="store_true", help="skip the V sweep")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.v = 512, 256, 32000
    if args.measure:
        floor = args.measure == "floor"
        report_measure(measure_here(lambda: make_inputs(args.n, args.d, args.v, floor), lambda i: step(args.measure, i)))
        return

    cases = ["crossent", "torch eager"]
    cases += [] if args.no_compile else ["torch.compile"]
    cases += ["torch native"] if has_native() else []
    cases += ["floor"]
    inputs = make_inputs(args.n, args.d, args.v, floor=True)

    # Correctness guard: every loss gives the same gradients before anything is timed.
    ref = step("torch eager", inputs)
    for name in cases:
        if name != "floor":
            for g, r in zip(step(name, inputs), ref):
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)

    # Timed in this order each round: crossent right beside the floor it is measured against.
    order = ["crossent", "floor"] + [c for c in cases if c not in ("crossent", "floor")]
    times = interleaved_seconds({name: (lambda name=name: step(name, inputs)) for name in order}, args.rounds)
    best = {name: min(t) for name, t in times.items()}
    shape = ["--n", str(args.n), "--d", str(args.d), "--v", str(args.v)]
    mem = {name: peak_extra_bytes(MODULE, name, *shape) for name in cases}
    n, d, v = args.n, args.d, args.v
    print(f"linear cross-entropy forward+backward, N={n}, D={d}, V={v}, float32, CPU; {machine()}")
    print(f"logits N*V: {n * v * 4 / 2**20:.0f} MiB, weight V*D: {v * d * 4 / 2**20:.0f} MiB; "
          f"{args.rounds} interleaved rounds; memory: fresh subprocess per case\n")
    print("time_s: the minimum over rounds; vs floor: min / min, and the median over rounds of the")
    print("ratio to the floor's time in the same round (robust to the machine's speed drifting)\n")
    print("| case | time_s | vs floor (min/min) | vs floor (paired median) | peak_extra_MiB | vs torch eager | vs torch native |")
    print("|---|---|---|---|---|---|---|")
    for name in cases:
        native = f"{mem[name] / mem['torch native']:.2f}x" if "torch native" in mem else "-"
        paired = paired_median_ratio(times, name, "floor")
        print(f"| {name} | {best[name]:.2f} | {best[name] / best['floor']:.2f}x | {paired:.2f}x "
              f"| {mem[name] / 2**20:.1f} | {mem[name] / mem['torch eager']:.2f}x | {native} |")
    print("\nper round (s): " + "; ".join(
        f"{name} " + " ".join(f"{t:.2f}" for t in times[name]) for name in order))

    if args.no_sweep:
        return
    sn, sd = (1024, 128) if args.quick else (n, d)
    print(f"\ncrossent's peak extra memory over V (N={sn}, D={sd}, float32; fresh subprocess each;")
    print("V*D and N*V in float32 bytes: the weight gradient and the logits it never builds)\n")
    print("| V | peak_extra_MiB | V*D_MiB | N*V_MiB | peak / (V*D) | peak / (N*V) |")
    print("|---|---|---|---|---|---|")
    for sv in SWEEP_V:
        m = peak_extra_bytes(MODULE, "crossent", "--n", str(sn), "--d", str(sd), "--v", str(sv))
        vd, nv = sv * sd * 4, sn * sv * 4
        print(f"| {sv} | {m / 2**20:.0f} | {vd / 2**20:.0f} | {nv / 2**20:.0f} | {m / vd:.2f} "
              f"| {m / nv:.2f} |")
    # The same over N: with V and D fixed the peak stays put (the chunk, not the batch, sets it).
    sv = SWEEP_V[0]
    print(f"\ncrossent's peak extra memory over N (V={sv}, D={sd}, float32; fresh subprocess each)\n")
    print("| N | peak_extra_MiB | V*D_MiB | N*V_MiB | peak / (V*D) | peak / (N*V) |")
    print("|---|---|---|---|---|---|")
    for nn in (sn // 2, sn, sn * 2):
        m = peak_extra_bytes(MODULE, "crossent", "--n", str(nn), "--d", str(sd), "--v", str(sv))
        vd, nv = sv * sd * 4, nn * sv * 4
        print(f"| {nn} | {m / 2**20:.0f} | {vd / 2**20:.0f} | {nv / 2**20:.0f} | {m / vd:.2f} "
              f"| {m / nv:.2f} |")


if __name__ == "__main__":
    main()
