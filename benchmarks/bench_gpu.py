"""GPU benchmark: crossent against torch and the fused-kernel peers, side by side in one process.

    python3 -m benchmarks.bench_gpu [--out DIR] [--budget S]   on a CUDA machine (benchmarks/run_gpu.sh)
    python3 -m benchmarks.bench_gpu --smoke                    the same code at tiny shapes, any machine

Sections, in this order (each row printed as it is measured; DIR/bench_gpu.json rewritten after
every row, so a run killed at any point keeps what it measured):
  floors     the device-to-device copy bandwidth and the bf16 matmul peak, measured in this run;
  small      a 64 x 10 classifier batch (crossent must never be slower than torch there);
  ce         cross_entropy forward+backward, 8192 x 128256 (bf16, fp32) and 8192 x 50257 bf16
             (rows not 16-byte aligned); each row's fraction of the two-pass floor (read the
             logits once, write the gradient once, at the measured copy bandwidth);
  linear     linear_cross_entropy forward+backward: Llama-3-8B head (N=8192, D=4096, V=128256
             bf16) and Gemma-2-2B (N=8192, D=2304, V=256000 bf16, softcap 30); the fraction of
             the 6 N D V FLOP floor at the measured matmul peak;
  distill    linear_distillation_loss forward+backward (generalized JSD, beta 0.5, temperature 2):
             student and teacher heads N=4096, D=D_t=1024, V=128256 bf16, against the torch
             composition (benchmarks/bench_distillation.py's) -- the distillation kernels (issue 23);
             the log-probs kernels (issue 22) run after this bench (benchmarks/bench_log_probs.py);
  crossover  Triton forced vs torch over 0.26M-268M elements (benchmarks/_gpu_crossover.py), CE
             at two class counts and BCE, both dtypes; prints the thresholds it suggests;
  compiled   torch.compile rows (CE and the linear head), last: compiling is slow, so they are
             skipped when the budget is spent.
Every row: ms (wall, median of CUDA-event-timed calls), gpu_ms (device time alone,
benchmarks/_gpu_timing.py), peak MiB (max_memory_allocated during one call beyond what was held).
Candidates: crossent (its own rule, and Triton forced), torch eager, torch.compile, torch's
F.linear_cross_entropy (torch >= 2.13), Liger-Kernel, Cut Cross-Entropy, quack -- each where it
imports (a note where it does not). Every candidate's loss and gradient are compared with torch
eager's before it is timed: a wrong one is reported, not ranked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import crossent

from . import _gpu_crossover
from ._gpu_timing import bandwidth_floor, matmul_peak, measure, sync, time_ms


def _peers():
    found, notes = {}, {}
    for name, module in [("liger", "liger_kernel"), ("cce", "cut_cross_entropy"), ("quack", "quack")]:
        try:
            found[name] = __import__(module)
        except Exception as e:  # a peer that fails to import is a note in the table, never a crash
            notes[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return found, notes


def _error(e) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


# ------------------------------------------------------------------ candidates


# torch.compile's backend: Inductor on a GPU; the smoke run traces the same graphs without
# generating code (aot_eager), which on a loaded CPU would take minutes
COMPILE = {"backend": "inductor"}


def _compile(fn):
    return torch.compile(fn, **COMPILE)


def ce_candidates(peers, compiled: bool):
    """name -> fn(x, t); torch eager first (the others are checked against it). ``compiled``:
    the torch.compile candidates only (the last section)."""
    c = {"torch": lambda x, t: F.cross_entropy(x, t)}
    if compiled:
        c["torch.compile"] = _compile(lambda x, t: F.cross_entropy(x, t))
        c["crossent under torch.compile"] = _compile(lambda x, t: crossent.cross_entropy(x, t))
        return c
    c["crossent"] = lambda x, t: crossent.cross_entropy(x, t)

    def forced(x, t):
        with crossent.use_backend("triton"):
            return crossent.cross_entropy(x, t)

    c["crossent[triton]"] = forced
    if "liger" in peers:
        from liger_kernel.transformers import LigerCrossEntropyLoss

        liger = LigerCrossEntropyLoss()
        c["liger"] = lambda x, t: liger(x, t)
    if "quack" in peers:
        from quack.cross_entropy import cross_entropy as quack_ce

        c["quack"] = lambda x, t: quack_ce(x, t)
    return c


def linear_candidates(peers, softcap, compiled: bool):
    kw = {"softcap": softcap} if softcap else {}

    def eager(x, w, t):  # the usual head: 16-bit logits, upcast, (softcapped,) cross-entropy
        z = (x @ w.t()).float()
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        return F.cross_entropy(z, t)

    c = {"torch": eager}
    if compiled:
        c["torch.compile"] = _compile(eager)
        c["crossent under torch.compile"] = _compile(lambda x, w, t: crossent.linear_cross_entropy(x, w, t, **kw))
        return c
    c["crossent"] = lambda x, w, t: crossent.linear_cross_entropy(x, w, t, **kw)
    if hasattr(F, "linear_cross_entropy") and not softcap:
        c["torch F.linear_cross_entropy"] = lambda x, w, t: F.linear_cross_entropy(x, w, t)
    if "liger" in peers:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(softcap=softcap)
        c["liger"] = lambda x, w, t: liger(w, x, t)
    if "cce" in peers:
        from cut_cross_entropy import linear_cross_entropy as cce

        c["cce"] = lambda x, w, t: cce(x, w, t, softcap=softcap)
    if "quack" in peers and not softcap:
        from quack.linear_cross_entropy import chunked_linear_cross_entropy

        c["quack"] = lambda x, w, t: chunked_linear_cross_entropy(x, w, t)
    return c


def _check(row, ref, loss, *grads):
    """The first candidate (torch eager) sets ``ref``; every later one records its largest
    difference from it in loss and gradients."""
    grads = [g.detach() for g in grads]
    if not ref:
        ref["loss"], ref["grads"] = loss, grads
    else:
        row["loss_err"] = abs(loss - ref["loss"])
        row["grad_err"] = max(float((g.float() - r.float()).abs().max()) for g, r in zip(grads, ref["grads"]))
    row["loss"] = loss


# ------------------------------------------------------------------ the run


class Bench:
    """The rows of one run: each printed as measured and the JSON rewritten after it (a killed run
    keeps every row it measured)."""

    def __init__(self, dev, out_dir, budget_s, smoke, prov):
        self.dev, self.out_dir, self.smoke, self.prov = dev, out_dir, smoke, prov
        self.deadline = time.monotonic() + budget_s
        self.rows = {"ce": [], "linear": [], "small": [], "distill": [], "crossover": [], "compiled": []}
        self.floors = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, section, row) -> None:
        self.rows[section].append(row)
        self.save()  # (cheap: a killed run keeps every row measured)
        shown = {k: float(format(v, ".4g")) if isinstance(v, float) else v for k, v in row.items()}
        print(f"{section}: " + json.dumps(shown, default=str), flush=True)

    def save(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        tmp = os.path.join(self.out_dir, "bench_gpu.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"provenance": self.prov, "floors": self.floors, **self.rows}, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.out_dir, "bench_gpu.json"))

    def case(self, section, row, candidates, inputs, reps, floor_ms):
        """Time every candidate on fresh copies of ``inputs`` (the tensors that need gradients
        first, then the targets); the first candidate is the reference."""
        ref = {}
        for name, fn in candidates.items():
            r = dict(row, candidate=name)
            if self.left() < 0:
                r["error"] = "skipped: over the time budget"
                self.emit(section, r)
                continue
            leaves = None
            try:
                leaves = [t.clone().requires_grad_() for t in inputs[0]]

                def step():
                    for t in leaves:
                        t.grad = None
                    fn(*leaves, *inputs[1]).backward()

                loss = fn(*leaves, *inputs[1])
                loss.backward()
                _check(r, ref, float(loss.detach().float()), *[t.grad for t in leaves])
                measure(r, step, self.dev, *((reps, 3) if not self.smoke else (2, 1)))
                r["floor_frac"] = floor_ms / r["ms"]
            except Exception as e:
                r["error"] = _error(e)
            self.emit(section, r)
            leaves = None  # (free the copies before the next candidate)
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()


def _logits(dev, n, v, dtype):
    gen = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(n, v, device=dev, generator=gen) * 2).to(dtype)
    return x, torch.randint(0, v, (n,), device=dev, generator=gen)


def _head(dev, n, d, v, dtype):
    gen = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(n, d, device=dev, generator=gen) * 0.5).to(dtype)
    w = (torch.randn(v, d, device=dev, generator=gen) * (1 / d**0.5)).to(dtype)
    return x, w, torch.randint(0, v, (n,), device=dev, generator=gen)


def ce_section(b: Bench, peers, compiled=False):
    shapes = [(8192, 128256, torch.bfloat16), (8192, 128256, torch.float32), (8192, 50257, torch.bfloat16)]
    if b.smoke:
        shapes = [(8, 300, torch.float32), (8, 37, torch.bfloat16)]
    for n, v, dtype in shapes[:1] if compiled else shapes:
        x, t = _logits(b.dev, n, v, dtype)
        floor_ms = 2 * x.numel() * x.element_size() / b.floors["bandwidth_Bps"] * 1e3
        row = {"case": f"cross_entropy {n}x{v} {str(dtype)[6:]}"}
        b.case("compiled" if compiled else "ce", row, ce_candidates(peers, compiled), ([x], [t]), 20, floor_ms)


def linear_section(b: Bench, peers, compiled=False):
    heads = [(8192, 4096, 128256, None), (8192, 2304, 256000, 30.0)]
    if b.smoke:
        heads = [(16, 8, 64, None), (16, 8, 64, 30.0)]
    dtype = torch.bfloat16
    for n, d, v, softcap in heads[:1] if compiled else heads:
        x, w, t = _head(b.dev, n, d, v, dtype)
        floor_ms = 6 * n * d * v / b.floors["matmul_FLOPs"] * 1e3
        row = {"case": f"linear_cross_entropy N={n} D={d} V={v} bf16" + (f" softcap={softcap}" if softcap else "")}
        b.case("compiled" if compiled else "linear", row, linear_candidates(peers, softcap, compiled), ([x, w], [t]),
               10, floor_ms)


def distill_section(b: Bench):
    from .bench_distillation import TEMPERATURE, _composition

    n, d, v = (4096, 1024, 128256) if not b.smoke else (16, 8, 64)
    dtype = torch.bfloat16
    x, w, _ = _head(b.dev, n, d, v, dtype)
    gen = torch.Generator(device=b.dev).manual_seed(1)
    xt = (torch.randn(n, d, device=b.dev, generator=gen) * 0.5).to(dtype)
    wt = (torch.randn(v, d, device=b.dev, generator=gen) * (1.5 / d**0.5)).to(dtype)
    candidates = {
        "torch composition": lambda x, w, xt, wt: _composition(x, w, xt, wt, 0.5),
        "crossent": lambda x, w, xt, wt: crossent.linear_distillation_loss(x, w, xt, wt, beta=0.5,
                                                                            temperature=TEMPERATURE),
    }
    floor_ms = 8 * n * d * v / b.floors["matmul_FLOPs"] * 1e3  # both heads' logits, grad_x, grad_W
    row = {"case": f"linear_distillation_loss JSD N={n} D={d} V={v} bf16"}
    b.case("distill", row, candidates, ([x, w], [xt, wt]), 5, floor_ms)


def small_section(b: Bench):
    x0 = torch.randn(64, 10, device=b.dev)
    t = torch.randint(0, 10, (64,), device=b.dev)
    for name, fn in [("torch", F.cross_entropy), ("crossent", crossent.cross_entropy)]:
        x = x0.clone().requires_grad_()

        def step():
            x.grad = None
            fn(x, t).backward()

        ms = time_ms(step, b.dev, *((50, 3) if not b.smoke else (2, 1)))
        b.emit("small", {"case": "cross_entropy 64x10 float32", "candidate": name, "ms": ms})


def crossover_section(b: Bench):
    _gpu_crossover.reference_check(b.dev)
    rows = _gpu_crossover.run(b.dev, b.smoke, b.deadline - 120 if not b.smoke else b.deadline,
                              lambda r: b.emit("crossover", r))
    for family in ("cross_entropy", "bce_with_logits"):
        k = _gpu_crossover.suggest(rows, family)
        b.floors[f"suggested_threshold_{family}"] = k
        print(f"crossover {family}: suggested threshold {k if k is not None else 'none (Triton never ahead)'} "
              f"elements", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for bench_gpu.json")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device (checks the script)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the whole bench")
    args = p.parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if smoke:
        COMPILE["backend"] = "aot_eager"
    peers, notes = _peers()
    prov = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke run: timings meaningless)",
        "torch": torch.__version__, "python": sys.version.split()[0], "smoke": smoke,
        "peers": {k: getattr(m, "__version__", "?") for k, m in peers.items()}, "peers_missing": notes,
    }
    try:
        import triton

        prov["triton"] = triton.__version__
    except ImportError:
        prov["triton"] = None
    print(f"## {prov['device']}; torch {prov['torch']}, triton {prov['triton']}; peers {prov['peers']}; "
          f"missing {list(notes)}", flush=True)
    b = Bench(dev, args.out, args.budget, smoke, prov)
    b.floors["bandwidth_Bps"] = bandwidth_floor(dev, 1 << (30 if not smoke else 16), torch.bfloat16 if not smoke else torch.float32)
    b.floors["matmul_FLOPs"] = matmul_peak(dev, 8192 if not smoke else 256)
    print(f"floors: copy bandwidth {b.floors['bandwidth_Bps'] / 1e9:.0f} GB/s, "
          f"matmul {b.floors['matmul_FLOPs'] / 1e12:.1f} TFLOP/s", flush=True)
    b.save()
    # (section, seconds it needs at least to start: a section that cannot finish is skipped whole)
    sections = [(lambda: small_section(b), 5), (lambda: ce_section(b, peers), 30),
                (lambda: linear_section(b, peers), 60), (lambda: distill_section(b), 40),
                (lambda: crossover_section(b), 60),
                (lambda: ce_section(b, peers, compiled=True), 60), (lambda: linear_section(b, peers, compiled=True), 90)]
    for run, needs in sections:
        if b.left() < (needs if not smoke else 0):
            print(f"skipped a section: {b.left():.0f} s left, it needs {needs}", flush=True)
            continue
        try:
            run()
        except Exception as e:  # one broken section must not lose the others' results
            print(f"section failed: {_error(e)}", flush=True)
            traceback.print_exc()
        sync(dev)
        b.save()
    print(f"done; {b.left():.0f} s of the budget left; JSON in {os.path.join(args.out, 'bench_gpu.json')}", flush=True)


if __name__ == "__main__":
    main()
