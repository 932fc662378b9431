"""GPU benchmark: crossent against torch and the fused-kernel peers, side by side in one process.

    python -m benchmarks.bench_gpu [--out DIR]          # on a CUDA machine, < 8 minutes on an H100/H200
    python -m benchmarks.bench_gpu --smoke              # the same code paths at tiny shapes, any machine

What it measures (every row: median ms over CUDA-event-timed repeats, after warm-up; peak memory =
torch.cuda.max_memory_allocated during one call minus the memory held before it, reset per case):
  floors, measured in the same run: the device-to-device bandwidth (a copy of the logits:
    bytes read + written / time) and the bf16 matmul peak (8192^3); the CE rows give their
    fraction of the two-pass floor (read the logits once, write the gradient once), the linear
    rows their fraction of the 6 N D V FLOP floor at the measured matmul peak;
  cross_entropy on logits, forward+backward: 8192 x 128256 in bf16 and fp32;
  linear_cross_entropy, forward+backward: N=8192, D=4096, V=128256 bf16 (Llama-3-8B head) and
    N=8192, D=2304, V=256000 bf16 with softcap 30 (Gemma-2-2B head);
  a 64 x 10 classifier batch (crossent must never be slower than torch there);
  a crossover sweep (crossent's Triton kernel forced vs torch) for _dispatch.TRITON_MIN_NUMEL.
Candidates: crossent (its own rule, and Triton forced), torch eager, torch.compile, torch's
F.linear_cross_entropy (torch >= 2.13), Liger-Kernel, Cut Cross-Entropy, quack -- each where it
imports (a note where it does not). Every candidate's loss and gradient are compared with torch
eager's before it is timed: a wrong one is reported, not ranked.

Results: a Markdown table on stdout (last), and JSON with the provenance under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import crossent


def _peers():
    found, notes = {}, {}
    for name, module in [("liger", "liger_kernel"), ("cce", "cut_cross_entropy"), ("quack", "quack")]:
        try:
            found[name] = __import__(module)
        except Exception as e:  # a peer that fails to import is a note in the table, never a crash
            notes[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return found, notes


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, dev, reps=20, warmup=3):
    """Median ms of fn() (CUDA events on a GPU; perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    out = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def peak_mib(fn, dev):
    if dev.type != "cuda":
        return float("nan")
    _sync(dev)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    _sync(dev)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def bandwidth_floor(dev, numel, dtype):
    x = torch.empty(numel, dtype=dtype, device=dev).normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), dev)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)  # bytes/s, read + write


def matmul_peak(dev, n):
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    b = torch.randn_like(a)
    ms = time_ms(lambda: a @ b, dev, reps=10)
    return 2 * n**3 / (ms * 1e-3)  # FLOP/s


# ------------------------------------------------------------------ cross-entropy on logits


def ce_candidates(peers, softcap=None):
    c = {"torch": lambda x, t: F.cross_entropy(x, t)}  # first: the others are checked against it
    c["torch.compile"] = torch.compile(lambda x, t: F.cross_entropy(x, t))
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


def run_ce(dev, n, v, dtype, peers, rows):
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.randn(n, v, device=dev, dtype=dtype, generator=gen) * 2
    t = torch.randint(0, v, (n,), device=dev, generator=gen)
    floor_s = 2 * x0.numel() * x0.element_size() / rows["_bandwidth"]
    ref = {}
    for name, fn in ce_candidates(peers).items():
        row = {"case": f"cross_entropy {n}x{v} {str(dtype)[6:]}", "candidate": name}
        try:
            x = x0.clone().requires_grad_()

            def step():
                x.grad = None
                fn(x, t).backward()

            loss = fn(x, t)
            loss.backward()
            _check(row, ref, float(loss.float()), x.grad)
            row["ms"] = time_ms(step, dev)
            row["peak_MiB"] = peak_mib(step, dev)
            row["floor_frac"] = floor_s * 1e3 / row["ms"]
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows["ce"].append(row)


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


# ------------------------------------------------------------------ linear cross-entropy


def linear_candidates(peers, softcap):
    kw = {"softcap": softcap} if softcap else {}

    def eager(x, w, t):  # the usual head: 16-bit logits, upcast, (softcapped,) cross-entropy
        z = (x @ w.t()).float()
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        return F.cross_entropy(z, t)

    c = {"torch": eager}  # first: the others are checked against it
    c["torch.compile"] = torch.compile(eager)
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


def run_linear(dev, n, d, v, dtype, softcap, peers, rows):
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = (torch.randn(n, d, device=dev, generator=gen) * 0.5).to(dtype)
    w0 = (torch.randn(v, d, device=dev, generator=gen) * (1 / d**0.5)).to(dtype)
    t = torch.randint(0, v, (n,), device=dev, generator=gen)
    floor_ms = 6 * n * d * v / rows["_matmul"] * 1e3
    case = f"linear_cross_entropy N={n} D={d} V={v} {str(dtype)[6:]}" + (f" softcap={softcap}" if softcap else "")
    ref = {}
    for name, fn in linear_candidates(peers, softcap).items():
        row = {"case": case, "candidate": name}
        try:
            x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()

            def step():
                x.grad = w.grad = None
                fn(x, w, t).backward()

            loss = fn(x, w, t)
            loss.backward()
            _check(row, ref, float(loss.float()), x.grad, w.grad)
            row["ms"] = time_ms(step, dev, reps=10)
            row["peak_MiB"] = peak_mib(step, dev)
            row["floor_frac"] = floor_ms / row["ms"]
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        rows["linear"].append(row)


# ------------------------------------------------------------------ small shapes, crossover


def run_small(dev, rows):
    x0 = torch.randn(64, 10, device=dev)
    t = torch.randint(0, 10, (64,), device=dev)
    for name, fn in [("crossent", crossent.cross_entropy), ("torch", F.cross_entropy)]:
        x = x0.clone().requires_grad_()

        def step():
            x.grad = None
            fn(x, t).backward()

        rows["small"].append({"case": "cross_entropy 64x10 float32", "candidate": name, "ms": time_ms(step, dev, reps=50)})


def run_crossover(dev, rows, shapes):
    for n, v, dtype in shapes:
        x0 = torch.randn(n, v, device=dev, dtype=dtype)
        t = torch.randint(0, v, (n,), device=dev)
        res = {}
        for name in ("triton", "torch"):
            x = x0.clone().requires_grad_()

            def step():
                x.grad = None
                with crossent.use_backend(name):
                    crossent.cross_entropy(x, t).backward()

            res[name] = time_ms(step, dev, reps=20)
        rows["crossover"].append({"case": f"{n}x{v} {str(dtype)[6:]}", "numel": n * v, "triton_ms": res["triton"],
                                  "torch_ms": res["torch"], "ratio": res["triton"] / res["torch"]})


# ------------------------------------------------------------------ the table


def table(rows) -> str:
    out = []
    for key, title in [("ce", "cross_entropy, forward+backward"), ("linear", "linear_cross_entropy, forward+backward"),
                       ("small", "small shapes"), ("crossover", "crossover: Triton forced vs torch")]:
        if not rows[key]:
            continue
        out.append(f"\n### {title}\n")
        if key == "crossover":
            out.append("| shape | numel | triton ms | torch ms | ratio |\n|---|---|---|---|---|")
            for r in rows[key]:
                out.append(f"| {r['case']} | {r['numel']} | {r['triton_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} |")
            continue
        out.append("| case | candidate | ms | peak MiB | of floor | loss err | grad err | note |\n|---|---|---|---|---|---|---|---|")
        for r in rows[key]:
            f = lambda k, fmt: format(r[k], fmt) if k in r else ""
            out.append(f"| {r['case']} | {r['candidate']} | {f('ms', '.3f')} | {f('peak_MiB', '.0f')} | "
                       f"{f('floor_frac', '.0%')} | {f('loss_err', '.1e')} | {f('grad_err', '.1e')} | {r.get('error', '')} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for bench_gpu.json")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device (checks the script)")
    args = p.parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    rows = {"ce": [], "linear": [], "small": [], "crossover": []}
    rows["_bandwidth"] = bandwidth_floor(dev, 1 << (30 if not smoke else 16), torch.bfloat16 if not smoke else torch.float32)
    rows["_matmul"] = matmul_peak(dev, 8192 if not smoke else 256)
    prov["bandwidth_GBps"] = rows["_bandwidth"] / 1e9
    prov["matmul_TFLOPs"] = rows["_matmul"] / 1e12
    steps = [
        lambda: run_small(dev, rows),
        lambda: run_ce(dev, *((8192, 128256) if not smoke else (8, 300)), torch.bfloat16 if not smoke else torch.float32, peers, rows),
        lambda: run_ce(dev, *((8192, 128256) if not smoke else (8, 300)), torch.float32, peers, rows),
        lambda: run_linear(dev, *((8192, 4096, 128256) if not smoke else (16, 8, 64)),
                           torch.bfloat16 if not smoke else torch.float32, None, peers, rows),
        lambda: run_linear(dev, *((8192, 2304, 256000) if not smoke else (16, 8, 64)),
                           torch.bfloat16 if not smoke else torch.float32, 30.0, peers, rows),
        lambda: run_crossover(dev, rows, [(n, v, dt) for n, v in ((1024, 1024), (4096, 2048), (4096, 8192), (8192, 32000))
                                          for dt in (torch.float32, torch.bfloat16)] if not smoke else [(4, 40, torch.float32)]),
    ]
    for step in steps:
        try:
            step()
        except Exception:  # one broken section must not lose the others' results
            traceback.print_exc()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    bw, mm = rows.pop("_bandwidth"), rows.pop("_matmul")
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump({"provenance": prov, **rows}, f, indent=1, default=str)
    print(f"\n## {prov['device']}; torch {prov['torch']}, triton {prov['triton']}; peers {prov['peers']}; "
          f"missing {list(notes)}")
    print(f"measured floors: copy bandwidth {bw / 1e9:.0f} GB/s, bf16 matmul {mm / 1e12:.0f} TFLOP/s")
    print(table(rows))


if __name__ == "__main__":
    main()
