"""Never slower than torch: crossent vs torch eager over the shapes users actually have.

Usage:  python -m benchmarks.bench_shapes [--rounds 7] [--quick] [--only SUBSTRING]

Each row runs crossent and torch interleaved in one process (min over rounds, CPU, float32 unless
the row says float64) and prints both times and the ratio crossent / torch. Targets (issue 6):
ratio <= 1.10 on every row, <= 0.5 on rows whose logits are 64 MB or more. Rows:
  - cross_entropy forward+backward: small to LLM-sized (N, C), K-dim segmentation, probability
    targets, label smoothing with class weights, ignore_index on a quarter of the targets;
  - the same forward-only, under torch.no_grad() and on inputs that do not require grad;
  - binary_cross_entropy_with_logits (pos_weight), binary_cross_entropy (below and above the
    fused kernel's crossover), nll_loss;
  - linear_cross_entropy vs F.cross_entropy(F.linear(h, W), t): small to medium (N, D) x V,
    probability targets, reduction='none' (whose backward recomputes the logits), no_grad;
  - the seed tutorial's training loop (SimpleNN = Linear(1, 2), SGD, 1000 epochs).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import crossent

from ._harness import interleaved_min_seconds, machine


def _ce_case(shape, *, dtype=torch.float32, probs=False, smoothing_weights=False, ignore_quarter=False,
             mode="train"):
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype)
    if probs:
        t = torch.randn(shape, generator=gen, dtype=dtype).softmax(1)
    else:
        t = torch.randint(0, c, shape[:1] + shape[2:], generator=gen)
        if ignore_quarter:
            t.view(-1)[::4] = -100
    kw = {}
    if smoothing_weights:
        kw = dict(weight=torch.rand(c, generator=gen, dtype=dtype) + 0.5, label_smoothing=0.1)

    def make(fn):
        if mode == "train":
            def run():
                xr = x.detach().requires_grad_()
                fn(xr, t, **kw).backward()
        elif mode == "no_grad":
            xg = x.detach().requires_grad_()

            def run():
                with torch.no_grad():
                    fn(xg, t, **kw)
        else:  # eval: inputs that do not require grad
            def run():
                fn(x, t, **kw)
        return run

    return make(crossent.cross_entropy), make(F.cross_entropy), x.numel() * x.element_size()


def _binary_case(shape, fn_ours, fn_torch, *, pos_weight=False, probs=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    if probs:
        x = x.sigmoid()
    y = torch.rand(shape, generator=gen)
    kw = {"pos_weight": torch.rand(shape[1:2] if len(shape) > 1 else shape, generator=gen) * 2} if pos_weight else {}
    if pos_weight and len(shape) == 4:
        kw = {"pos_weight": torch.tensor([3.0]).view(1, 1, 1)}

    def make(fn):
        def run():
            xr = x.detach().requires_grad_()
            fn(xr, y, **kw).backward()
        return run

    return make(fn_ours), make(fn_torch), x.numel() * x.element_size()


def _nll_case(shape):
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(shape, generator=gen).log_softmax(1)
    t = torch.randint(0, shape[1], (shape[0],), generator=gen)

    def make(fn):
        def run():
            xr = lp.detach().requires_grad_()
            fn(xr, t).backward()
        return run

    return make(crossent.nll_loss), make(F.nll_loss), lp.numel() * lp.element_size()


def _linear_case(n, d, v, *, probs=False, reduction="mean", mode="train"):
    """linear_cross_entropy vs torch's composition F.cross_entropy(F.linear(h, W), t)."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen) / d**0.5
    w = torch.randn(v, d, generator=gen)
    t = torch.randn(n, v, generator=gen).softmax(1) if probs else torch.randint(0, v, (n,), generator=gen)

    def torch_composed(h, w, t, reduction):
        return F.cross_entropy(F.linear(h, w), t, reduction=reduction)

    def make(fn):
        if mode == "train":
            def run():
                hr, wr = h.detach().requires_grad_(), w.detach().requires_grad_()
                torch.autograd.grad(fn(hr, wr, t, reduction=reduction).sum(), (hr, wr))
        else:
            def run():
                with torch.no_grad():
                    fn(h, w, t, reduction=reduction)
        return run

    return make(crossent.linear_cross_entropy), make(torch_composed), n * v * 4


def _tutorial(criterion_cls):
    torch.manual_seed(0)
    data = torch.tensor([[2, 0], [5, 1], [8, 0], [12, 0], [15, 1], [17, 1]], dtype=torch.float32)
    X, y = data[:, 0].unsqueeze(1), data[:, 1].long()
    model = torch.nn.Linear(1, 2)
    criterion = criterion_cls()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(1000):
        opt.zero_grad()
        criterion(model(X), y).backward()
        opt.step()


def rows(quick: bool):
    big = not quick
    yield "cross_entropy (8, 2)", _ce_case((8, 2))
    yield "cross_entropy (8, 2) float64", _ce_case((8, 2), dtype=torch.float64)
    yield "cross_entropy (64, 10)", _ce_case((64, 10))
    yield "cross_entropy (64, 10) float64", _ce_case((64, 10), dtype=torch.float64)
    yield "cross_entropy (512, 100)", _ce_case((512, 100))
    yield "cross_entropy (512, 100) float64", _ce_case((512, 100), dtype=torch.float64)
    yield "cross_entropy (1024, 1000)", _ce_case((1024, 1000))  # (about the crossover)
    yield "cross_entropy (2048, 1000)", _ce_case((2048, 1000))
    yield "cross_entropy (4096, 1000)", _ce_case((4096, 1000))
    if big:
        yield "cross_entropy (4096, 32000)", _ce_case((4096, 32000))
        yield "cross_entropy (2048, 128256)", _ce_case((2048, 128256))
        yield "cross_entropy K-dim (16, 21, 128, 128)", _ce_case((16, 21, 128, 128))
        # few positions, many classes (a (B, V, T) layout): torch's amax over V is slow there
        yield "cross_entropy K-dim (8, 32000, 16)", _ce_case((8, 32000, 16))
    yield "cross_entropy K-dim (2, 32000, 16)", _ce_case((2, 32000, 16))
    yield "cross_entropy K-dim (4, 16, 128, 128)", _ce_case((4, 16, 128, 128))
    yield "cross_entropy K-dim (8, 16, 128, 128)", _ce_case((8, 16, 128, 128))
    yield "cross_entropy probs (512, 100)", _ce_case((512, 100), probs=True)
    yield "cross_entropy smoothing 0.1 + weights (4096, 1000)", _ce_case((4096, 1000), smoothing_weights=True)
    yield "cross_entropy ignore 1/4 (4096, 1000)", _ce_case((4096, 1000), ignore_quarter=True)
    for mode in ("no_grad", "eval"):
        yield f"cross_entropy {mode} (64, 10)", _ce_case((64, 10), mode=mode)
        yield f"cross_entropy {mode} (4096, 1000)", _ce_case((4096, 1000), mode=mode)
        if big:
            yield f"cross_entropy {mode} (4096, 32000)", _ce_case((4096, 32000), mode=mode)
            yield f"cross_entropy {mode} K-dim (16, 21, 128, 128)", _ce_case((16, 21, 128, 128), mode=mode)
    bce_l = (crossent.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits)
    yield "bce_with_logits (64, 1)", _binary_case((64, 1), *bce_l)
    yield "bce_with_logits (4096, 100)", _binary_case((4096, 100), *bce_l)
    yield "bce_with_logits pos_weight (16, 1, 256, 256)", _binary_case((16, 1, 256, 256), *bce_l, pos_weight=True)
    yield "bce (4096, 100)", _binary_case((4096, 100), crossent.binary_cross_entropy, F.binary_cross_entropy, probs=True)
    # above BINARY_TORCH_MAX_NUMEL (4.2M): the fused kernel
    yield "bce_with_logits (4096, 2048)", _binary_case((4096, 2048), *bce_l)
    yield "bce_with_logits pos_weight (16, 1, 1024, 1024)", _binary_case((16, 1, 1024, 1024), *bce_l, pos_weight=True)
    yield "bce (4096, 2048)", _binary_case((4096, 2048), crossent.binary_cross_entropy, F.binary_cross_entropy, probs=True)
    yield "nll_loss (64, 10)", _nll_case((64, 10))
    if big:
        yield "nll_loss (2048, 32000)", _nll_case((2048, 32000))
    yield "linear_cross_entropy (64, 32) x 10", _linear_case(64, 32, 10)
    yield "linear_cross_entropy (512, 128) x 1000", _linear_case(512, 128, 1000)
    yield "linear_cross_entropy (1024, 128) x 4096", _linear_case(1024, 128, 4096)
    yield "linear_cross_entropy (512, 256) x 32000", _linear_case(512, 256, 32000)
    yield "linear_cross_entropy probs (512, 256) x 32000", _linear_case(512, 256, 32000, probs=True)
    yield "linear_cross_entropy 'none' (512, 256) x 32000", _linear_case(512, 256, 32000, reduction="none")
    yield "linear_cross_entropy no_grad (64, 32) x 10", _linear_case(64, 32, 10, mode="no_grad")
    yield "linear_cross_entropy no_grad (512, 256) x 32000", _linear_case(512, 256, 32000, mode="no_grad")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="skip the rows of 64 MB and more")
    ap.add_argument("--only", default="", help="run only rows whose name contains this")
    ap.add_argument("--no-tutorial", action="store_true")
    args = ap.parse_args()
    print(f"crossent vs torch eager, CPU; {machine()}; min of {args.rounds} interleaved rounds\n")
    print("| case | logits (MB) | torch (us) | crossent (us) | crossent / torch |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, (ours, theirs, nbytes) in rows(args.quick):
        if args.only not in name:
            continue
        rounds = args.rounds if nbytes < (64 << 20) else max(3, args.rounds // 2)
        # many repetitions per timing for tiny cases, so timer resolution does not matter
        reps = max(1, min(200, int(2e6 // max(nbytes, 1))))
        best = interleaved_min_seconds(
            {"torch": _repeat(theirs, reps), "crossent": _repeat(ours, reps)}, rounds
        )
        ratio = best["crossent"] / best["torch"]
        worst = max(worst, ratio)
        print(f"| {name} | {nbytes / 1e6:.2f} | {best['torch'] / reps * 1e6:.0f} | "
              f"{best['crossent'] / reps * 1e6:.0f} | {ratio:.2f} |", flush=True)
    if not args.no_tutorial and (not args.only or "tutorial" in args.only):
        best = interleaved_min_seconds(
            {"torch": lambda: _tutorial(torch.nn.CrossEntropyLoss),
             "crossent": lambda: _tutorial(crossent.nn.CrossEntropyLoss)}, max(3, args.rounds // 2)
        )
        ratio = best["crossent"] / best["torch"]
        worst = max(worst, ratio)
        print(f"| seed tutorial loop, 1000 epochs (s) | - | {best['torch']:.3f} s | {best['crossent']:.3f} s | {ratio:.2f} |")
    print(f"\nworst ratio: {worst:.2f}")


def _repeat(fn, reps):
    def run():
        for _ in range(reps):
            fn()
    return run


if __name__ == "__main__":
    main()
