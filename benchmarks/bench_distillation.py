"""Distillation of a linear head, forward+backward on CPU float32: crossent vs the torch
composition vs TRL's chunked divergence; and the top-k loss vs TRL's server composition.

Usage:  python -m benchmarks.bench_distillation [--n 4096] [--d 1024] [--d-teacher 1024]
                                                [--v 128256] [--k 64] [--beta 0.5] [--rounds 3]
                                                [--quick] [--groups dense,topk] [--skip NAME,...]

Dense cases (the generalized JSD at beta, temperature 2, both models' logits from their heads;
each returns the gradients w.r.t. the student's hidden states and head weight):
  crossent            crossent.linear_distillation_loss(h, W, h_t, W_t, beta=, temperature=2)
  torch composition   both logits materialised, log_softmax, TRL GKD's divergence with F.kl_div
                      (trl.experimental.gkd GKDTrainer.generalized_jsd_loss's formula)
  TRL chunked         trl.trainer.distillation_trainer._chunked_divergence_loss (TRL's own
                      function: on CPU its torch tiles; skipped when TRL is not installed)
Top-k cases (forward KL against the teacher's top-k log-probs, with the tail bucket):
  crossent top-k      crossent.linear_topk_distillation_loss(h, W, ids, log_q, temperature=2)
  TRL top-k           the student's logits materialised, log_softmax, TRL's server-distillation
                      forward KL (ServerDistillationTrainer._compute_server_forward_kl_loss);
                      TRL has no fused path for a served teacher
Timing: interleaved rounds in one process (harness in _harness.py), each case's minimum and its
paired median ratio to crossent. Memory: each case in a fresh subprocess, peak RSS of one step
beyond its inputs. A correctness guard compares every case's gradients before timing.

Targets (issue 23): crossent's peak below a quarter of the composition's, its time no slower than
TRL's chunked function. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import types

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

MODULE = "benchmarks.bench_distillation"
TEMPERATURE = 2.0


def _trl():
    """TRL's functions, or None where TRL is not installed."""
    try:
        from trl.experimental.server_distillation import server_distillation_trainer as server
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
    except ImportError:
        return None
    return types.SimpleNamespace(chunked=_chunked_divergence_loss, server=server)


def _composition(h, w, h_t, w_t, beta):
    """TRL GKD's generalized JSD on materialised logits (its formula, F.kl_div), 'batchmean'."""
    log_p = F.log_softmax(F.linear(h, w) / TEMPERATURE, -1)
    with torch.no_grad():
        log_q = F.log_softmax(F.linear(h_t, w_t) / TEMPERATURE, -1)
    if beta == 0.0:
        jsd = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    elif beta == 1.0:
        jsd = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta)
        log_m = torch.logsumexp(torch.stack([log_p + torch.log1p(-b), log_q + torch.log(b)]), 0)
        jsd = b * F.kl_div(log_m, log_q, reduction="none", log_target=True) + (1 - b) * F.kl_div(
            log_m, log_p, reduction="none", log_target=True)
    return jsd.sum() / h.shape[0]


def _trl_chunked(h, w, h_t, w_t, beta):
    n = h.shape[0]
    loss, _, _ = _trl().chunked(h[None], h_t[None], w, w_t, torch.ones(1, n, dtype=torch.long), beta,
                                temperature=TEMPERATURE)
    return loss


def _trl_topk(h, w, ids, log_q):
    server = _trl().server
    trainer = types.SimpleNamespace(loss_add_tail=True,
                                    _reduce_divergence_loss=server.ServerDistillationTrainer._reduce_divergence_loss)
    log_p = F.log_softmax(F.linear(h, w) / TEMPERATURE, -1)
    result = {"topk_logprobs": log_q[None], "topk_token_ids": ids[None]}
    labels = torch.zeros(1, h.shape[0], dtype=torch.long)
    return server.ServerDistillationTrainer._compute_server_forward_kl_loss(trainer, result, log_p[None], labels)


def make_inputs(n, d, d_t, v, k):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen)
    w = torch.randn(v, d, generator=gen) / d**0.5
    h_t = torch.randn(n, d_t, generator=gen)
    w_t = torch.randn(v, d_t, generator=gen) * (1.5 / d_t**0.5)
    with torch.no_grad():  # the teacher's top-k, as a server would return them (in chunks of rows)
        tops = [torch.topk(F.log_softmax(F.linear(h_t[i:i + 256], w_t), -1), k) for i in range(0, n, 256)]
    ids = torch.cat([t.indices for t in tops])
    log_q = torch.cat([t.values for t in tops])
    return h, w, h_t, w_t, ids, log_q


def step(name, inputs, beta):
    """One forward+backward of case ``name``: (grad h, grad W)."""
    h, w, h_t, w_t, ids, log_q = inputs
    h = h.detach().requires_grad_()
    w = w.detach().requires_grad_()
    loss = {
        "crossent": lambda: crossent.linear_distillation_loss(h, w, h_t, w_t, beta=beta, temperature=TEMPERATURE),
        "torch composition": lambda: _composition(h, w, h_t, w_t, beta),
        "TRL chunked": lambda: _trl_chunked(h, w, h_t, w_t, beta),
        "crossent top-k": lambda: crossent.linear_topk_distillation_loss(h, w, ids, log_q, temperature=TEMPERATURE),
        "TRL top-k": lambda: _trl_topk(h, w, ids, log_q),
    }[name]()
    return torch.autograd.grad(loss, (h, w))


def _table(title, cases, base, times, mem):
    best = {name: min(times[name]) for name in cases}
    print(f"\n{title}\n")
    print(f"| case | time_s | vs {base} (paired median) | peak_extra_MiB | peak vs {base} |")
    print("|---|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {best[name]:.2f} | {paired_median_ratio(times, name, base):.2f}x "
              f"| {mem[name] / 2**20:.0f} | {_ratio(mem[name], mem[base])} |")


def _ratio(a: int, b: int) -> str:
    """a / b, or '-' where b is below 1 MiB (the fused loss's peak can be ~0: a ratio to it says nothing)."""
    return f"{a / b:.2f}x" if b >= 2**20 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--d-teacher", type=int, default=1024)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=512, D=256, D_t=384, V=32000: a smoke run")
    ap.add_argument("--groups", default="dense,topk", help="which case groups to run: dense, topk or both")
    ap.add_argument("--skip", default="", help="cases to leave out, e.g. 'torch composition' where it "
                    "does not fit in memory (at N=4096, V=128256 it needs more than 24 GiB)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.d_teacher, args.v = 512, 256, 384, 32000
    shape = (args.n, args.d, args.d_teacher, args.v, args.k)
    if args.measure:
        report_measure(measure_here(lambda: make_inputs(*shape), lambda i: step(args.measure, i, args.beta)))
        return

    has_trl = _trl() is not None
    groups = args.groups.split(",")
    dense = (["crossent", "torch composition"] + (["TRL chunked"] if has_trl else [])) if "dense" in groups else []
    topk = (["crossent top-k"] + (["TRL top-k"] if has_trl else [])) if "topk" in groups else []
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    dense, topk = [c for c in dense if c not in skip], [c for c in topk if c not in skip]
    inputs = make_inputs(*shape)
    # Correctness guard: the same gradients from every case of a group before anything is timed.
    for group in (g for g in (dense, topk) if g):
        ref = step(group[0], inputs, args.beta)
        for name in group[1:]:
            for g, r in zip(step(name, inputs, args.beta), ref):
                torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)

    cases = dense + topk
    times = interleaved_seconds({name: (lambda name=name: step(name, inputs, args.beta)) for name in cases},
                                args.rounds)
    flags = ["--n", str(args.n), "--d", str(args.d), "--d-teacher", str(args.d_teacher), "--v", str(args.v),
             "--k", str(args.k), "--beta", str(args.beta)]
    mem = {name: peak_extra_bytes(MODULE, name, *flags) for name in cases}
    n, v = args.n, args.v
    print(f"distillation forward+backward, N={n}, D={args.d}, D_t={args.d_teacher}, V={v}, k={args.k}, "
          f"beta={args.beta}, T={TEMPERATURE}, float32, CPU; {machine()}")
    print(f"one model's logits N*V: {n * v * 4 / 2**20:.0f} MiB; {args.rounds} interleaved rounds; memory: "
          "fresh subprocess per case, peak RSS of one step beyond its inputs")
    if dense:
        _table("dense teacher (generalized JSD)", dense, "crossent", times, mem)
    if topk:
        _table(f"top-k teacher (forward KL, tail bucket, k={args.k})", topk, "crossent top-k", times, mem)
    print("\nper round (s): " + "; ".join(f"{name} " + " ".join(f"{t:.2f}" for t in times[name]) for name in cases))


if __name__ == "__main__":
    main()
