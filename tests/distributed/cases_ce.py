"""vocab_parallel_cross_entropy on local shards: the option grid, K-dim inputs, layouts, errors,
collective counts and determinism."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from cases import F64, case, close, gen, grid, probabilities, targets, torch_has, vocab_slice

import crossent
from crossent.distributed import vocab_parallel_cross_entropy as vp_ce


def _reference(x, t, w, opts):
    """crossent.cross_entropy on the full logits (normalizer: the summed loss over it)."""
    opts = dict(opts)
    normalizer = opts.pop("normalizer", None)
    if normalizer is not None:
        opts["reduction"] = "sum"
        return crossent.cross_entropy(x, t, w, **opts) / normalizer
    return crossent.cross_entropy(x, t, w, **opts)


def _one(rank, world, num_classes, shape_extra, opts, *, soft, weighted, seed, dtype=torch.float64,
         tol=None, kw=None):
    """Compare one configuration; every rank builds the same full tensors."""
    g = gen(seed)
    n = 6
    x = torch.randn(n, num_classes, *shape_extra, generator=g, dtype=torch.float64).mul_(3).to(dtype)
    w_dtype = (kw or {}).get("dtype", dtype)
    w = torch.rand(num_classes, generator=g, dtype=torch.float64).add_(0.5).to(w_dtype) if weighted else None
    t = probabilities(g, x.shape).to(dtype) if soft else targets(g, (n, *shape_extra), num_classes)
    sl = vocab_slice(num_classes, world, rank)
    cut = (slice(None), sl)
    xr = x.detach()[cut].clone().requires_grad_()
    tr = t[cut] if soft else t
    loss = vp_ce(xr, tr, w, **opts, **(kw or {}))
    x_ref = x.detach().clone().requires_grad_()
    ref = _reference(x_ref, t, w, {**opts, **(kw or {})})
    tol = tol or F64
    what = f"V={num_classes} extra={shape_extra} soft={soft} weighted={weighted} {opts}"
    close(loss, ref, "loss " + what, **tol)
    grad_out = torch.rand(ref.shape, generator=g, dtype=torch.float64).add_(0.5).to(ref.dtype)
    loss.backward(grad_out)
    ref.backward(grad_out)
    close(xr.grad, x_ref.grad[cut], "grad " + what, **tol)
    if torch_has(opts) and dtype == torch.float64:
        x_t = x.detach().clone().requires_grad_()
        theirs = F.cross_entropy(x_t, t, w, **opts)
        close(loss, theirs, "vs torch " + what)
        theirs.backward(grad_out)
        close(xr.grad, x_t.grad[cut], "grad vs torch " + what)


def _grid(rank, world, num_classes, seed):
    axes = grid(reduction=["none", "sum", "mean"], weighted=[False, True], eps=[0.0, 0.1],
                soft=[False, True], extra=[{}, {"z_loss": 0.01, "softcap": 2.5}])
    for i, a in enumerate(axes):
        opts = dict(reduction=a["reduction"], label_smoothing=a["eps"], **a["extra"])
        _one(rank, world, num_classes, (), opts, soft=a["soft"], weighted=a["weighted"], seed=seed + i)


@case(2, 4)
def ce_grid_V7(rank, world):  # W=4: shards 2, 2, 2, 1
    _grid(rank, world, 7, 100)


@case(4)
def ce_grid_V10(rank, world):  # W=4: 3, 3, 3, 1
    _grid(rank, world, 10, 200)


@case(4)
def ce_grid_V5(rank, world):  # W=4: 2, 2, 1, 0 (an empty shard)
    _grid(rank, world, 5, 300)


@case(2, 4)
def ce_kdim_normalizer_unbatched(rank, world):
    for i, a in enumerate(grid(reduction=["none", "sum", "mean"], soft=[False, True], weighted=[False, True])):
        opts = dict(reduction=a["reduction"], label_smoothing=0.2, z_loss=0.02, softcap=3.0)
        _one(rank, world, 7, (3, 2), opts, soft=a["soft"], weighted=a["weighted"], seed=400 + i)
    for i, soft in enumerate([False, True]):  # normalizer: a number and a tensor
        for normalizer in (5.0, torch.tensor(7.0, dtype=torch.float64)):
            opts = dict(reduction="mean", label_smoothing=0.1, normalizer=normalizer)
            _one(rank, world, 10, (), opts, soft=soft, weighted=True, seed=450 + i)
    # unbatched (C,) with a () target
    g = gen(470)
    x = torch.randn(9, generator=g, dtype=torch.float64)
    sl = vocab_slice(9, world, rank)
    xr = x[sl].clone().requires_grad_()
    xf = x.clone().requires_grad_()
    t = torch.tensor(8)
    loss = vp_ce(xr, t, label_smoothing=0.3)
    ref = crossent.cross_entropy(xf, t, label_smoothing=0.3)
    close(loss, ref, "unbatched loss")
    loss.backward()
    ref.backward()
    close(xr.grad, xf.grad[sl], "unbatched grad")


@case(2, 4)
def ce_ignored_and_foreign_targets(rank, world):
    """All targets ignored (mean: nan, gradient 0, as torch); all targets in rank 0's classes
    (the other ranks own none); float32 against the float64 result."""
    g = gen(500)
    x = torch.randn(5, 10, generator=g, dtype=torch.float64)
    sl = vocab_slice(10, world, rank)
    for t in (torch.full((5,), -100), torch.tensor([0, 1, 0, 2, 1]) % (10 // world)):
        for reduction, eps, w in (("mean", 0.0, None), ("mean", 0.1, torch.rand(10, generator=g, dtype=torch.float64)),
                                  ("sum", 0.1, None), ("none", 0.0, None)):
            xr = x[:, sl].clone().requires_grad_()
            xf = x.clone().requires_grad_()
            loss = vp_ce(xr, t, w, reduction=reduction, label_smoothing=eps)
            ref = crossent.cross_entropy(xf, t, w, reduction=reduction, label_smoothing=eps)
            close(loss, ref, f"loss t={t.tolist()} {reduction}")
            loss.sum().backward()
            ref.sum().backward()
            close(xr.grad, xf.grad[:, sl], f"grad t={t.tolist()} {reduction}")
            assert not torch.isnan(xr.grad).any()
    for soft in (False, True):  # float32 and bfloat16 inputs, loss dtype float32 for bfloat16
        for dtype, tol, kw in ((torch.float32, dict(atol=2e-6, rtol=2e-5), {}),
                               (torch.bfloat16, dict(atol=2e-2, rtol=2e-2), {"dtype": torch.float32})):
            _one(rank, world, 10, (), dict(reduction="mean", label_smoothing=0.1, z_loss=0.01), soft=soft,
                 weighted=True, seed=520, dtype=dtype, tol=tol, kw=kw)


@case(2, 4)
def ce_layouts(rank, world):
    """num_classes given, an explicit uneven vocab_range, and the sizes inferred (default)."""
    g = gen(600)
    c = 11
    x = torch.randn(4, c, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 0, 5, -100])
    ref = crossent.cross_entropy(x, t, label_smoothing=0.1)
    sl = vocab_slice(c, world, rank)
    close(vp_ce(x[:, sl], t, label_smoothing=0.1, num_classes=c), ref, "num_classes")
    close(vp_ce(x[:, sl], t, label_smoothing=0.1), ref, "inferred sizes")
    bounds = [0, 1] + [1 + (k * (c - 1)) // (world - 1) for k in range(1, world)]  # 1, then the rest
    start, stop = bounds[rank], bounds[rank + 1]
    close(vp_ce(x[:, start:stop], t, label_smoothing=0.1, vocab_range=(start, stop), num_classes=c),
          ref, "vocab_range")
    close(vp_ce(x[:, start:stop], t, label_smoothing=0.1), ref, "uneven inferred sizes")


@case(2)
def ce_errors(rank, world):
    from crossent._checks import InvalidArgument

    x = torch.randn(3, 4, dtype=torch.float64)
    for kwargs, pattern in (
        (dict(num_classes=100), "default layout"),
        (dict(vocab_range=(0, 3), num_classes=8), "vocab_range must satisfy"),
        (dict(reduction="avg", num_classes=8), "reduction must be"),
        (dict(group="tp", num_classes=8), "group must be"),
        (dict(deterministic=1, num_classes=8), "deterministic must be"),
    ):
        try:
            vp_ce(x, torch.tensor([0, 1, 2]), **kwargs)
        except (InvalidArgument, TypeError) as err:
            assert pattern in str(err), (kwargs, str(err))
        else:
            raise AssertionError(f"no error for {kwargs}")
    # not twice differentiable: the second derivative raises instead of returning a wrong zero
    xg = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    try:
        torch.autograd.grad(vp_ce(xg, torch.tensor([0, 1, 2]), num_classes=8), xg, create_graph=True)
    except InvalidArgument as err:
        assert "second derivatives" in str(err), str(err)
    else:
        raise AssertionError("a second derivative went through")
    t = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    try:
        vp_ce(x, t, num_classes=8)
    except InvalidArgument as err:
        assert "does not differentiate" in str(err) or "requires grad" in str(err)
    else:
        raise AssertionError("target requiring grad accepted")
    # torch's target dtypes and torch's refusal of a class weight requiring grad
    for target, ok in ((torch.tensor([0, 1, 2], dtype=torch.uint8), True),
                       (torch.tensor([0, 1, 2], dtype=torch.int32), False)):
        try:
            vp_ce(x, target, num_classes=8)
        except RuntimeError as err:
            assert not ok and "int64 or uint8" in str(err), str(err)
        else:
            assert ok, f"{target.dtype} accepted"
    try:
        vp_ce(x, torch.tensor([0, 1, 2]), torch.rand(8, dtype=torch.float64, requires_grad=True))
    except InvalidArgument as err:
        assert "torch does not differentiate" in str(err), str(err)
    else:
        raise AssertionError("a class weight requiring grad accepted")


@case(2, 4)
def ce_collective_counts(rank, world):
    """Forward: one all_reduce MAX + one all_reduce SUM; backward: none (CommDebugMode)."""
    from torch.distributed.tensor.debug import CommDebugMode

    c = 10
    sl = vocab_slice(c, world, rank)
    for soft, eps, reduction in ((False, 0.0, "mean"), (False, 0.1, "none"), (True, 0.1, "sum")):
        g = gen(700)
        x = torch.randn(8, c, generator=g, dtype=torch.float64)[:, sl].clone().requires_grad_()
        t = probabilities(g, (8, c))[:, sl] if soft else targets(g, (8,), c)
        w = torch.rand(c, generator=g, dtype=torch.float64)
        fwd, bwd = CommDebugMode(), CommDebugMode()
        with fwd:
            loss = vp_ce(x, t, w, reduction=reduction, label_smoothing=eps, z_loss=0.1, softcap=4.0)
        with bwd:
            loss.sum().backward()
        counts = {str(k).split(".")[-1]: v for k, v in fwd.get_comm_counts().items()}
        assert counts == {"all_reduce": 2}, counts
        assert bwd.get_total_counts() == 0, bwd.get_comm_counts()


@case(2, 4)
def ce_deterministic_bitwise(rank, world):
    """Two runs give the same bits, on every rank; deterministic=True (rank-order sums) agrees."""
    g = gen(800)
    c = 10
    sl = vocab_slice(c, world, rank)
    x = torch.randn(64, c, generator=g, dtype=torch.float32) * 4
    t = targets(g, (64,), c)
    runs = []
    for det in (False, False, True, True):
        xr = x[:, sl].clone().requires_grad_()
        loss = vp_ce(xr, t, label_smoothing=0.1, z_loss=0.01, deterministic=det)
        loss.backward()
        runs.append((loss.detach(), xr.grad))
    for a, b in ((runs[0], runs[1]), (runs[2], runs[3])):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    close(runs[0][0], runs[2][0], "deterministic=True", atol=1e-6, rtol=1e-6)
    values = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(values, runs[0][0])
    assert all(torch.equal(v, values[0]) for v in values), "ranks disagree on the loss"
