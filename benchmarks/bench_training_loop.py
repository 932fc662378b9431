"""The loss as a training loop meets it: torch's and crossent's, inside a real training step.

Usage:  python -m benchmarks.bench_training_loop [--rounds 7] [--busy 0,1,2,4] [--cases NAME,...]
                                                [--quick] [--aa] [--json FILE]

Each step is what a training loop does: a model (an MLP head, a 1x1-convolution segmentation head,
or the hidden states of a language model's last layer) produces *fresh* logits from its input, the
loss is computed, backward runs through loss and model, and SGD updates the parameters -- so the
loss meets fresh logits, a fresh gradient buffer and an allocator that the model's own tensors
have just used, every step. torch's loss and crossent's run interleaved in one process (one step
each per round, the same model and data), and the loss's own time is taken inside the step: from
the logits to their gradient (the loss forward and its backward as far as the logits, and the
head's weight gradient for the linear loss), the rest of the step around it untimed. The same again while k busy processes (pure-Python spin loops, started
and stopped here) load the cores. Per case: median, min and max over the rounds of the loss time,
the ratio of medians to torch's, the worst round's ratio; and the peak extra memory of one whole
step in a fresh subprocess.

Cases (``--cases``): ``ce`` 4096 x 32000 logits from a Linear(64, 32000) head; ``kdim`` a
(16, 21, 128, 128) segmentation head (Conv2d 1x1 from 32 channels); ``linear`` the fused linear
loss: hidden states (2048, 512) of a Linear(512, 512) layer into a 128256-class head
(crossent.linear_cross_entropy vs F.linear + F.cross_entropy); ``small`` a (64, 10) classifier
(MLP 32 -> 64 -> 10), whose step takes ~0.2 ms: one round there is ``SMALL_STEPS`` steps and its
time their mean (one step's time is below the timer's and the scheduler's noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import crossent

from ._harness import machine, measure_here, peak_extra_bytes, report_measure

# Steps per round of the small case: 200 x ~0.25 ms = 50 ms, long enough that a timer tick or one
# context switch (~0.1 ms under load) moves a round by well under 1%.
SMALL_STEPS = 200
# --aa: torch's loss in both columns, to show the noise floor of the ratio (an A/A test)
AA = False


class _Case:
    """A model, its data, and the loss call of one implementation ('torch' or 'crossent')."""

    def __init__(self, name: str, seed: int = 0):
        self.name = name
        gen = torch.Generator().manual_seed(seed)
        if name == "ce":
            self.model = torch.nn.Linear(64, 32000)
            self.x, self.t = torch.randn(4096, 64, generator=gen), torch.randint(0, 32000, (4096,), generator=gen)
        elif name == "kdim":
            self.model = torch.nn.Conv2d(32, 21, 1)
            self.x = torch.randn(16, 32, 128, 128, generator=gen)
            self.t = torch.randint(0, 21, (16, 128, 128), generator=gen)
        elif name == "linear":
            self.model = torch.nn.Linear(512, 512)
            self.head = torch.nn.Linear(512, 128256, bias=False)
            self.x, self.t = torch.randn(2048, 512, generator=gen), torch.randint(0, 128256, (2048,), generator=gen)
        elif name == "small":
            self.model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
            self.x, self.t = torch.randn(64, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
        else:
            raise ValueError(f"unknown case {name!r}")
        params = list(self.model.parameters()) + (list(self.head.parameters()) if name == "linear" else [])
        self.opt = torch.optim.SGD(params, lr=1e-3)

    def round(self, impl: str) -> float:
        """One round: one step, or SMALL_STEPS of the small case; their mean loss seconds."""
        steps = SMALL_STEPS if self.name == "small" else 1
        return sum(self.step(impl) for _ in range(steps)) / steps

    def step(self, impl: str) -> float:
        """One training step; returns the seconds from the logits (hidden states for 'linear') to
        their gradient."""
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)  # fresh every step, as a model's output is
        leaf = out.detach().requires_grad_()  # the loss's input; the model's graph waits for it
        start = time.perf_counter()
        if self.name == "linear":
            w = self.head.weight
            if impl == "crossent" and not AA:
                loss = crossent.linear_cross_entropy(leaf, w, self.t)
            else:
                loss = F.cross_entropy(F.linear(leaf, w), self.t)
        else:
            loss = (crossent.cross_entropy if impl == "crossent" and not AA else F.cross_entropy)(leaf, self.t)
        loss.backward()  # to the logits (and the head's weight for 'linear')
        seconds = time.perf_counter() - start
        out.backward(leaf.grad)  # the model's own backward
        self.opt.step()
        return seconds


class _Busy:
    """k spinning processes for the duration of a ``with`` block."""

    def __init__(self, k: int):
        self.k, self.procs = k, []

    def __enter__(self):
        code = "import time\nt = time.time()\nwhile True:\n    pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.k)]
        time.sleep(0.5 if self.k else 0.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def run_case(name: str, rounds: int) -> dict:
    """Interleaved rounds with torch's loss and crossent's: the loss times. A round is one step of
    each (``SMALL_STEPS`` of each for the small case, alternating step by step, so that a slow
    stretch of the machine falls on both: with whole blocks of 200 steps per loss, an A/A run of
    torch against itself gave ratios of 0.96-1.10; step by step, see --aa)."""
    case = _Case(name)
    times = {"torch": [], "crossent": []}
    for impl in times:  # warm-up
        case.round(impl)
    steps = SMALL_STEPS if name == "small" else 1
    for r in range(rounds):
        total = dict.fromkeys(times, 0.0)
        for s in range(steps):
            order = ("torch", "crossent") if (r + s) % 2 == 0 else ("crossent", "torch")
            for impl in order:
                total[impl] += case.step(impl)
        for impl in times:
            times[impl].append(total[impl] / steps)
    return times


def summary(times: dict) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "torch_ms": [round(1e3 * t, 3) for t in times["torch"]],
        "crossent_ms": [round(1e3 * t, 3) for t in times["crossent"]],
        "torch_median_ms": round(1e3 * med["torch"], 3),
        "crossent_median_ms": round(1e3 * med["crossent"], 3),
        "ratio_of_medians": round(med["crossent"] / med["torch"], 3),
        "worst_ratio": round(max(times["crossent"]) / max(times["torch"]), 3),
    }


def _measure(name: str, impl: str) -> None:
    case = _Case(name)
    report_measure(measure_here(lambda: case, lambda c: c.step(impl)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--busy", default="0,1,2,4")
    ap.add_argument("--cases", default="ce,kdim,linear,small")
    ap.add_argument("--quick", action="store_true", help="3 rounds, no busy processes, no memory")
    ap.add_argument("--json", default=None)
    ap.add_argument("--aa", action="store_true", help="torch's loss in both columns (the ratio's noise floor)")
    ap.add_argument("--measure", nargs=2, metavar=("CASE", "IMPL"))
    args = ap.parse_args()
    if args.measure:
        _measure(*args.measure)
        return
    if args.quick:
        args.rounds, args.busy = 3, "0"
    if args.aa:
        global AA
        AA = True
    print(f"# {machine()}" + ("  (A/A: torch's loss in both columns)" if AA else ""))
    results = []
    for k in (int(b) for b in args.busy.split(",")):
        with _Busy(k):
            for name in args.cases.split(","):
                row = {"case": name, "busy": k, **summary(run_case(name, args.rounds))}
                results.append(row)
                print(json.dumps(row), flush=True)
    if not (args.quick or args.aa):
        for name in args.cases.split(","):
            for impl in ("torch", "crossent"):
                mib = peak_extra_bytes("benchmarks.bench_training_loop", name, impl) / 2**20
                results.append({"case": name, "impl": impl, "peak_extra_MiB": round(mib, 1)})
                print(json.dumps(results[-1]), flush=True)
    print()
    print("| case | busy processes | torch median (ms) | crossent median (ms) | ratio | torch min-max | crossent min-max | worst-round ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "busy" in r:
            print(f"| {r['case']} | {r['busy']} | {r['torch_median_ms']} | {r['crossent_median_ms']} | "
                  f"{r['ratio_of_medians']} | {min(r['torch_ms'])}-{max(r['torch_ms'])} | "
                  f"{min(r['crossent_ms'])}-{max(r['crossent_ms'])} | {r['worst_ratio']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
