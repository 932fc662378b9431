"""Per-token log-probs + entropy of a linear head, forward+backward: crossent vs TRL's two ways.

Usage:  python -m benchmarks.bench_log_probs [--n 4096] [--d 1024] [--v 128256] [--rounds 3]
                                             [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]

The step every RL trainer runs: log p_t and H per token from hidden states h (B, N/B, D) and the head
W (V, D), then the gradient of a combined loss sum_i a_i log p_i + c_i H_i (a policy-gradient
term plus an entropy bonus; a, c random) w.r.t. h and W (torch.autograd.grad: nothing
accumulates). Cases, timed side by side in one process (interleaved rounds, _harness.py):

  crossent          crossent.linear_log_probs(h, W, t, return_entropy=True)
  composition       logits = h @ W.T, then TRL's selective_log_softmax(logits, t) and
                    entropy_from_logits(logits) (trl.trainer.utils; a plain torch log_softmax +
                    gather + -(p log p).sum without TRL): what GRPO ran before the fused head
  trl chunked       TRL's own fused head kernel, trl.kernels.ChunkedLogProbFunction (its torch
                    path on the CPU, its Triton kernels on a GPU), chunk 32768 as TRL's wrapper

Peak extra memory: on the CPU a fresh subprocess per case builds the inputs, runs the case once,
resets the peak-RSS counter, runs it again and reports VmHWM - VmRSS before (the gradients
included); on a GPU torch.cuda.max_memory_allocated over the second run, minus the inputs.
Correctness guard: every case's outputs and gradients equal the composition's before timing.
Targets (issue 22): peak memory below a quarter of the composition's, time no worse than it.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

import crossent

from ._harness import (
    interleaved_seconds,
    machine,
    measure_here,
    paired_median_ratio,
    report_measure,
)

MODULE = "benchmarks.bench_log_probs"
CASES = ("crossent", "composition", "trl chunked")


def _trl_utils():
    try:
        from trl.trainer import utils
    except Exception:  # TRL absent, or not importable with this transformers
        return None
    return utils


def _composition(h, w, t):
    logits = h @ w.T
    utils = _trl_utils()
    if utils is not None:
        return utils.selective_log_softmax(logits, t), utils.entropy_from_logits(logits)
    log_p = F.log_softmax(logits.float(), -1)
    return log_p.gather(-1, t.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def _trl_chunked(h, w, t):
    from trl.kernels import ChunkedLogProbFunction

    flat = h.reshape(-1, h.shape[-1])  # (TRL's wrapper passes the (N, D) counted positions)
    out = ChunkedLogProbFunction.apply(flat, w, None, t.reshape(-1), 1.0, 32768, None, 1.0, ("log_probs", "entropy"))
    return out[0].view(t.shape), out[1].view(t.shape)


def _crossent(h, w, t):
    return crossent.linear_log_probs(h, w, t, return_entropy=True)


FNS = {"crossent": _crossent, "composition": _composition, "trl chunked": _trl_chunked}


def available() -> list[str]:
    try:
        from trl.kernels import ChunkedLogProbFunction  # noqa: F401
    except Exception:
        return ["crossent", "composition"]
    return list(CASES)


BATCH = 8  # sequences: the tokens come as (B, N/B, D), as TRL hands them (its loops run per sequence)


def make_inputs(n, d, v, device, dtype):
    gen = torch.Generator().manual_seed(0)
    b = BATCH if n % BATCH == 0 else 1
    h = (torch.randn(b, n // b, d, generator=gen) / d**0.5).to(device, dtype)
    w = torch.randn(v, d, generator=gen).to(device, dtype)
    t = torch.randint(0, v, (b, n // b), generator=gen).to(device)
    a, c = torch.randn(b, n // b, generator=gen).to(device), torch.randn(b, n // b, generator=gen).to(device)
    return h, w, t, a, c


def step(name, inputs):
    """One forward+backward: (log_probs, entropy, grad h, grad W)."""
    h, w, t, a, c = inputs
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    lp, ent = FNS[name](h, w, t)
    gh, gw = torch.autograd.grad((lp.float() * a + ent.float() * c).sum(), (h, w))
    return lp.detach(), ent.detach(), gh, gw


def _cuda_peak(name, inputs) -> int:
    step(name, inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(name, inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _cpu_peak(name, args) -> int:
    import subprocess

    cmd = [sys.executable, "-m", MODULE, "--measure", name, "--n", str(args.n), "--d", str(args.d),
           "--v", str(args.v), "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def _timed(cases, inputs, rounds, cuda):
    def run(name):
        step(name, inputs)
        if cuda:
            torch.cuda.synchronize()

    return interleaved_seconds({name: (lambda name=name: run(name)) for name in cases}, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=1024, D=256, V=32000")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.v = 1024, 256, 32000
    dtype = getattr(torch, args.dtype)
    if args.measure:
        report_measure(measure_here(lambda: make_inputs(args.n, args.d, args.v, "cpu", dtype),
                                    lambda i: step(args.measure, i)))
        return
    cuda = args.device.startswith("cuda")
    cases = available()
    inputs = make_inputs(args.n, args.d, args.v, args.device, dtype)
    ref = step("composition", inputs)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-4)
    for name in cases:
        for got, want in zip(step(name, inputs), ref):
            torch.testing.assert_close(got.float(), want.float(), **tol)
    start = time.perf_counter()
    times = _timed(cases, inputs, args.rounds, cuda)
    mem = {name: _cuda_peak(name, inputs) if cuda else _cpu_peak(name, args) for name in cases}
    best = {name: min(t) for name, t in times.items()}
    n, d, v = args.n, args.d, args.v
    print(f"log-probs + entropy forward+backward, N={n}, D={d}, V={v}, {args.dtype}, {args.device}; "
          f"{machine() if not cuda else torch.cuda.get_device_name()}")
    print(f"logits N*V: {n * v * 4 / 2**20:.0f} MiB (float32); {args.rounds} interleaved rounds "
          f"({time.perf_counter() - start:.0f} s); memory: "
          f"{'max_memory_allocated' if cuda else 'fresh subprocess per case'}\n")
    print("| case | time_s (min) | vs composition (paired median) | peak_extra_MiB | vs composition |")
    print("|---|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {best[name]:.3f} | {paired_median_ratio(times, name, 'composition'):.2f}x "
              f"| {mem[name] / 2**20:.1f} | {mem[name] / mem['composition']:.3f}x |")
    print("\nper round (s): " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in ts) for k, ts in times.items()))


if __name__ == "__main__":
    main()
