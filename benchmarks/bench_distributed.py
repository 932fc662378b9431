"""crossent.distributed on gloo (CPU) at a fixed total vocabulary: time, peak memory per rank and
bytes communicated, for world sizes 1, 2 and 4.

Usage:  python -m benchmarks.bench_distributed [--n 1024] [--d 512] [--v 32000]
                                               [--worlds 1,2,4] [--rounds 3]

For each world size W, W fresh gloo processes (one per rank, torch threads = max(1, cores // W))
run, float32, forward + backward:
  linear    vocab_parallel_linear_cross_entropy(x (N, D), W_r (V/W, D), t), label smoothing 0.1
  logits    vocab_parallel_cross_entropy(z_r (N, V/W), t), label smoothing 0.1
and, at W = 1 only, the single-process crossent.linear_cross_entropy / cross_entropy as baselines.
Time: the minimum over rounds (a barrier before each). Memory: peak extra resident memory of the
step beyond its inputs (harness.measure_here: VmHWM - VmRSS, after a warm-up), the maximum over
ranks. Bytes: every functional collective's payload (input bytes) counted by a dispatch mode, per
rank and step, next to the formula of the docstrings. On a 2-core CPU, W = 4 ranks share 2 cores:
the times then measure contention, not scaling (the per-rank FLOPs shrink as 1/W; see the README's
"Distributed" section for what changes on GPUs and NCCL). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from ._harness import machine, measure_here

_COLLECTIVES = {"all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single"}


class _Bytes(TorchDispatchMode):
    """Sums the input bytes of every c10d functional collective (the payload each rank sends)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).split(".")[-2] in _COLLECTIVES:
            t = args[0]
            self.bytes += t.numel() * t.element_size()
        return func(*args, **(kwargs or {}))


def _cases(rank, world, n, d, v):
    import crossent
    from crossent.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    per = -(-v // world)
    start, stop = min(rank * per, v), min(rank * per + per, v)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, v, (n,), generator=g)

    def linear_setup():
        x = torch.randn(n, d, generator=g).requires_grad_()
        w = (torch.randn(stop - start, d, generator=g) * 0.02).requires_grad_()
        return x, w

    def linear_run(inputs):
        x, w = inputs
        loss = vocab_parallel_linear_cross_entropy(x, w, t, group=None, num_classes=v, label_smoothing=0.1)
        torch.autograd.grad(loss, (x, w))

    def logits_setup():
        return (torch.randn(n, stop - start, generator=g).requires_grad_(),)

    def logits_run(inputs):
        (z,) = inputs
        loss = vocab_parallel_cross_entropy(z, t, num_classes=v, label_smoothing=0.1)
        torch.autograd.grad(loss, (z,))

    cases = {"linear": (linear_setup, linear_run), "logits": (logits_setup, logits_run)}
    if world == 1:
        def single_linear(inputs):
            x, w = inputs
            torch.autograd.grad(crossent.linear_cross_entropy(x, w, t, label_smoothing=0.1), (x, w))

        def single_logits(inputs):
            (z,) = inputs
            torch.autograd.grad(crossent.cross_entropy(z, t, label_smoothing=0.1), (z,))

        cases["single-process linear"] = (linear_setup, single_linear)
        cases["single-process logits"] = (logits_setup, single_logits)
    return cases


def _rank(rank, world, port, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    for name, (setup, run) in _cases(rank, world, args.n, args.d, args.v).items():
        peak = measure_here(setup, run)
        inputs = setup()
        counter = _Bytes()
        with counter:
            run(inputs)
        best = float("inf")
        for _ in range(args.rounds):
            dist.barrier()
            start = time.perf_counter()
            run(inputs)
            best = min(best, time.perf_counter() - start)
        out[name] = {"seconds": best, "peak_extra_bytes": peak, "comm_bytes": counter.bytes}
    gathered = [None] * world
    dist.all_gather_object(gathered, out)
    if rank == 0:
        merged = {name: {"seconds": max(r[name]["seconds"] for r in gathered),
                         "peak_extra_bytes": max(r[name]["peak_extra_bytes"] for r in gathered),
                         "comm_bytes": max(r[name]["comm_bytes"] for r in gathered)} for name in out}
        queue.put(merged)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _formula_bytes(case: str, n: int, d: int, world: int) -> int:
    """The docstrings' payload per rank and step (float32): MAX [N] + SUM [3, N] (label smoothing),
    plus the linear loss's all-reduce of grad_x [N, D]; none at W = 1."""
    if world == 1:
        return 0
    stats = 4 * n + 3 * 4 * n
    return stats + (4 * n * d if case == "linear" else 0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--worlds", default="1,2,4")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for world in (int(w) for w in args.worlds.split(",")):
        queue = ctx.Queue()
        mp.spawn(_rank, args=(world, _free_port(), args, queue), nprocs=world, join=True)
        for name, r in queue.get().items():
            rows.append((world, name, r))
    print(f"\n{machine()}; gloo; N={args.n}, D={args.d}, V={args.v}, float32, label_smoothing=0.1, "
          f"forward+backward; min of {args.rounds} rounds\n")
    print("| W | V/W | case | time_ms | peak_extra_MiB per rank | comm_bytes per rank (formula) |")
    print("|---|---|---|---|---|---|")
    for world, name, r in rows:
        base = name.split()[-1]
        formula = _formula_bytes(base, args.n, args.d, world) if "single" not in name else 0
        print(f"| {world} | {-(-args.v // world)} | {name} | {r['seconds'] * 1e3:.0f} | "
              f"{r['peak_extra_bytes'] / 2**20:.1f} | {r['comm_bytes']} ({formula}) |")
    print(json.dumps({"rows": [(w, n, r) for w, n, r in rows]}), file=sys.stderr)


if __name__ == "__main__":
    main()
