"""Per-token log-probs + entropy of a linear head, forward+backward: crossent vs TRL's two ways.

Usage:  python -m benchmarks.bench_log_probs [--n N --d D --v V | --quick] [--rounds 3]
                                             [--device cpu|cuda] [--dtype float32|bfloat16] [--profile]

Without --n/--d/--v: on the CPU two shapes that finish in a few minutes on a small machine
(N=1024, D=128, V=32768, where the softmax work dominates; N=512, D=512, V=32768, where the
head's products do), on a GPU issue 22's shape N=4096, D=1024, V=128256 and N=1024, D=512, V=32768.

The step every RL trainer runs: log p_t and H per token from hidden states h (B, N/B, D) and the head
W (V, D), then the gradient of a combined loss sum_i a_i log p_i + c_i H_i (a policy-gradient
term plus an entropy bonus; a, c random) w.r.t. h and W (torch.autograd.grad: nothing
accumulates). Cases:

  crossent          crossent.linear_log_probs(h, W, t, return_entropy=True)
  composition       logits = h @ W.T, then TRL's selective_log_softmax(logits, t) and
                    entropy_from_logits(logits) (trl.trainer.utils; a plain torch log_softmax +
                    gather + -(p log p).sum without TRL): what GRPO ran before the fused head
  trl chunked       TRL's own fused head kernel, trl.kernels.ChunkedLogProbFunction (its torch
                    path on the CPU, its Triton kernels on a GPU), chunk 32768 as TRL's wrapper

(Liger-Kernel has no per-token log-prob + entropy function: its GRPO/PPO losses return the loss,
so there is no like-for-like Liger case.)

Time: the cases interleaved in one process, each call on fresh copies of h and W (made outside the
timer, as a training loop hands new activations every step), `--rounds` rounds after a warm-up
call that also checks every case's outputs and gradients against the composition's; the table
gives each case's median and the median over rounds of its time / the composition's in the same
round (robust to the load of a shared machine drifting between rounds).
Peak extra memory: on the CPU a fresh subprocess per case (glibc's mmap threshold pinned, so freed
buffers leave the resident set) builds the inputs, warms the code up on a tiny shape, then reports
VmHWM - VmRSS before the full-size call (the gradients included); on a GPU
torch.cuda.max_memory_allocated over the second call, minus the inputs.
--profile: one call of each case under torch's profiler instead of the rounds and the memory:
wall time, the matrix products' self time with their rate, and the rest (what says whether a shape
is product-bound, where crossent's 8 N D V FLOPs against the composition's 6 decide).
Targets (issue 22): peak memory below a quarter of the composition's, time no worse than it.
Prints a markdown table per shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import crossent

from ._harness import machine, paired_median_ratio

MODULE = "benchmarks.bench_log_probs"
CASES = ("crossent", "composition", "trl chunked")
CPU_SHAPES = ((1024, 128, 32768), (512, 512, 32768))
GPU_SHAPES = ((4096, 1024, 128256), (1024, 512, 32768))
BATCH = 8  # sequences: the tokens come as (B, N/B, D), as TRL hands them (its loops run per sequence)
# glibc returns a free()d block to the OS only if it was mmap()ed; its threshold grows up to 32 MiB
# after the first frees, so chunk-sized buffers would stay resident and later peaks look smaller.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


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


def make_inputs(n, d, v, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b = BATCH if n % BATCH == 0 else 1
    h = (torch.randn(b, n // b, d, generator=gen) / d**0.5).to(device, dtype)
    w = torch.randn(v, d, generator=gen).to(device, dtype)
    t = torch.randint(0, v, (b, n // b), generator=gen).to(device)
    a, c = torch.randn(b, n // b, generator=gen).to(device), torch.randn(b, n // b, generator=gen).to(device)
    return h, w, t, a, c


def fresh(inputs):
    """New storage for the activations and the head (a training step's new tensors)."""
    h, w, t, a, c = inputs
    return h.clone(), w.clone(), t, a, c


def step(name, inputs):
    """One forward+backward: (log_probs, entropy, grad h, grad W)."""
    h, w, t, a, c = inputs
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    lp, ent = FNS[name](h, w, t)
    gh, gw = torch.autograd.grad((lp.float() * a + ent.float() * c).sum(), (h, w))
    return lp.detach(), ent.detach(), gh, gw


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(cases, inputs, rounds, device) -> dict:
    """name -> seconds per round; every call on fresh copies made outside the timer."""
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name in cases:
            args = fresh(inputs)
            _sync(device)
            start = time.perf_counter()
            step(name, args)
            _sync(device)
            times[name].append(time.perf_counter() - start)
            del args
    return times


def checked_warm_up(cases, inputs, dtype):
    """One call of each case (the warm-up), its outputs and gradients against the composition's."""
    ref = step("composition", fresh(inputs))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-4)
    for name in cases:
        if name != "composition":
            for got, want in zip(step(name, fresh(inputs)), ref):
                torch.testing.assert_close(got.float(), want.float(), **tol)


def _cuda_peak(name, inputs) -> int:
    step(name, fresh(inputs))
    args = fresh(inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(name, args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure_cold(name, n, d, v, dtype) -> int:
    """In this (fresh) process: warm the code up on a tiny shape, build the inputs, reset the
    peak-RSS counter, run the full-size call once: VmHWM - VmRSS before, in bytes."""
    step(name, make_inputs(BATCH * 4, 16, 64, "cpu", dtype))
    inputs = make_inputs(n, d, v, "cpu", dtype)
    crossent.empty_cache()  # (nothing large is cached after the tiny warm-up; as in _harness)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    step(name, inputs)
    return (_status_kb("VmHWM") - before) * 1024


def _cpu_peak(name, n, d, v, dtype_name) -> int:
    cmd = [sys.executable, "-m", MODULE, "--measure", name, "--n", str(n), "--d", str(d), "--v", str(v),
           "--dtype", dtype_name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **MALLOC_ENV},
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def run_shape(n, d, v, args, cases):
    dtype, cuda = getattr(torch, args.dtype), args.device.startswith("cuda")
    inputs = make_inputs(n, d, v, args.device, dtype)
    start = time.perf_counter()
    checked_warm_up(cases, inputs, dtype)
    times = timed(cases, inputs, args.rounds, args.device)
    del inputs
    mem = {name: _cuda_peak(name, make_inputs(n, d, v, args.device, dtype)) if cuda
           else _cpu_peak(name, n, d, v, args.dtype) for name in cases}
    elapsed = time.perf_counter() - start
    print(f"\n### N={n}, D={d}, V={v}, {args.dtype}, {args.device}\n")
    print(f"logits N*V: {n * v * dtype.itemsize / 2**20:.0f} MiB; grad W (V*D): {v * d * dtype.itemsize / 2**20:.0f} "
          f"MiB; {args.rounds} interleaved rounds + memory in {elapsed:.0f} s\n")
    print("| case | time_s (median) | time vs composition (paired median) | peak_extra_MiB | memory vs composition |")
    print("|---|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {statistics.median(times[name]):.3f} | {paired_median_ratio(times, name, 'composition'):.2f}x "
              f"| {mem[name] / 2**20:.1f} | {mem[name] / mem['composition']:.3f}x |")
    print("\nper round (s): " + "; ".join(f"{k} " + " ".join(f"{t:.3f}" for t in ts) for k, ts in times.items()),
          flush=True)


PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")


def profile_shape(n, d, v, args, cases) -> None:
    """--profile: one call of each case on fresh copies, under torch's profiler: the wall time, the
    matrix products' self time (their FLOPs: 2 N D V each) and everything else."""
    dtype = getattr(torch, args.dtype)
    inputs = make_inputs(n, d, v, args.device, dtype)
    for name in cases:  # (warm-up on a tiny shape: the code paths, not the sizes)
        step(name, make_inputs(BATCH * 4, 16, 64, args.device, dtype))
    print(f"\n### N={n}, D={d}, V={v}, {args.dtype}, {args.device}: one profiled call each\n")
    print("| case | time (s) | products (s) | product FLOPs | GFLOP/s | rest (s) |")
    print("|---|---|---|---|---|---|")
    for name in cases:
        args_ = fresh(inputs)
        start = time.perf_counter()
        with torch.profiler.profile() as prof:
            step(name, args_)
        wall = time.perf_counter() - start
        products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS) / 1e6
        flops = {"crossent": 8, "composition": 6, "trl chunked": 8}[name] * n * d * v
        print(f"| {name} | {wall:.1f} | {products:.1f} | {flops / 1e12:.2f} T | {flops / products / 1e9:.0f} "
              f"| {wall - products:.1f} |", flush=True)
        del args_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int)
    ap.add_argument("--d", type=int)
    ap.add_argument("--v", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=1024, D=256, V=32000")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true",
                    help="one profiled call per case: products' time and the rest (no rounds, no memory)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.measure:
        print(json.dumps({"peak_extra_bytes": measure_cold(args.measure, args.n, args.d, args.v, dtype)}))
        return
    if args.quick:
        shapes = [(1024, 256, 32000)]
    elif args.n or args.d or args.v:
        shapes = [(args.n or 4096, args.d or 1024, args.v or 128256)]
    else:
        shapes = GPU_SHAPES if args.device.startswith("cuda") else CPU_SHAPES
    cuda = args.device.startswith("cuda")
    print(f"log-probs + entropy, forward + backward of sum(a lp + c ent); "
          f"{torch.cuda.get_device_name() if cuda else machine()}; "
          f"memory: {'max_memory_allocated' if cuda else 'fresh subprocess per case'}")
    if not cuda:
        print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for n, d, v in shapes:
        (profile_shape if args.profile else run_shape)(n, d, v, args, available())
    if not cuda:
        print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
