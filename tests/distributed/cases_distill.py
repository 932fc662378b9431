"""vocab_parallel_linear_distillation_loss on weight shards (both heads split alike): the value and the
student's gradients (input, this rank's weight and bias rows) against single-process
crossent.linear_distillation_loss on the gathered heads and the float64 reference, over beta {0, 0.5, 1}
x temperature x softcaps x hard_weight x ignored rows x reductions ('mean', 'sum', 'none', normalizer),
D_t != D, even, uneven and empty shards; no target, soft_weight 0, -inf logits, float32, no gradient,
collective counts, bitwise reruns, memory, DTensor heads, the refusals."""

from __future__ import annotations

import torch
import torch.distributed as dist
from cases import F64, case, close, gen, grid, raises, vocab_slice
from cases_linear import _Largest

import crossent
from crossent import reference
from crossent.distributed import vocab_parallel_linear_distillation_loss as vp_ld

D, DT = 5, 7  # the student's and the teacher's hidden widths


def _problem(seed, n, c, *, bias=True, dtype=torch.float64, masked=(), ignore_every=4):
    g = gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x, w, xt, wt = r(n, D), r(c, D) * 0.8, r(n, DT), r(c, DT) * 0.8
    b, bt = (r(c), r(c)) if bias else (None, None)
    if masked:  # masked classes: -inf logits in both models (never a target)
        b[list(masked)] = float("-inf")
        bt[list(masked)] = float("-inf")
    t = torch.randint(0, c, (n,), generator=g)
    for k in masked:
        t[t == k] = next(j for j in range(c) if j not in masked)
    if ignore_every:
        t[::ignore_every] = -100
    a = r(n)  # the weights of a 'none' loss's backward
    cast = lambda v: v.to(dtype) if v is not None else None
    return cast(x), cast(w), cast(b), cast(xt), cast(wt), cast(bt), t, a


def _leaves(sl, x, w, b):
    leaf = lambda v: v.detach().clone().requires_grad_()
    return leaf(x), leaf(w[sl]), leaf(b[sl]) if b is not None else None


def _grads(loss, a, leaves):
    total = (loss * a.to(loss.dtype)).sum() if loss.dim() else loss * 1.7  # (a grad_output != 1)
    return torch.autograd.grad(total, [t for t in leaves if t is not None])


def _compare(rank, world, seed, n, c, *, opts, bias=True, chunk=3, dtype=torch.float64, tol=None, masked=(),
             sl=None, with_target=True, oracle=True, ignore_every=4, **kw):
    x, w, b, xt, wt, bt, t, a = _problem(seed, n, c, bias=bias, dtype=dtype, masked=masked, ignore_every=ignore_every)
    sl = sl or vocab_slice(c, world, rank)
    target = t if with_target else None
    what = f"V={c} shard={sl} bias={bias} {opts} {kw} target={with_target}"
    xr, wr, br = _leaves(sl, x, w, b)
    got = vp_ld(xr, wr, xt, wt[sl], linear_bias=br, teacher_linear_bias=bt[sl] if bt is not None else None,
                target=target, chunk_size=chunk, **opts, **kw)
    ref_leaves = _leaves(slice(None), x, w, b)
    ref = crossent.linear_distillation_loss(ref_leaves[0], ref_leaves[1], xt, wt, linear_bias=ref_leaves[2],
                                            teacher_linear_bias=bt, target=target, **opts)
    assert got.dtype == ref.dtype and got.shape == ref.shape, (got.dtype, ref.dtype, got.shape, ref.shape, what)
    tol = tol or F64
    close(got, ref, f"loss {what}", **tol)
    mine, theirs = _grads(got, a, (xr, wr, br)), _grads(ref, a, ref_leaves)
    want = [theirs[0], theirs[1][sl]] + ([theirs[2][sl]] if b is not None else [])
    for gm, gt, name in zip(mine, want, "xWb"):
        assert gm.dtype == gt.dtype, (name, gm.dtype, gt.dtype)
        close(gm, gt, f"grad_{name} {what}", **tol)
    if oracle and dtype == torch.float64:  # the float64 specification (crossent.reference)
        ro = dict(opts)
        normalizer = ro.pop("normalizer", None)
        spec = reference.linear_distillation_loss(x, w, xt, wt, b, bt, target, normalizer=normalizer, **ro)
        close(got, spec, f"loss vs reference {what}")
    return got


_REDUCTIONS = [dict(reduction="mean"), dict(reduction="sum"), dict(reduction="none"),
               dict(reduction="mean", normalizer=9.0)]


def _grid(rank, world, c, seed, *, full):
    """beta x temperature x softcaps x hard_weight x the four reductions (96 calls), biases or none in
    turn. Not ``full``: the reductions in turn over the first four axes (24), then every beta with every
    reduction at the hardest options (T != 1, both softcaps, a hard part): 36 calls."""
    axes = list(grid(beta=[0.0, 0.5, 1.0], temperature=[1.0, 0.7], caps=[(None, None), (2.5, 4.0)],
                     hard_weight=[0.0, 0.6]))
    if full:
        combos = [dict(ax, reduction=r) for ax in axes for r in range(4)]
    else:
        combos = [dict(ax, reduction=i % 4) for i, ax in enumerate(axes)]
        combos += [dict(beta=beta, temperature=0.7, caps=(2.5, 4.0), hard_weight=0.6, reduction=r)
                   for beta in (0.0, 0.5, 1.0) for r in range(4)]
    for i, ax in enumerate(combos):
        opts = dict(beta=ax["beta"], temperature=ax["temperature"], softcap=ax["caps"][0],
                    teacher_softcap=ax["caps"][1], hard_weight=ax["hard_weight"], **_REDUCTIONS[ax["reduction"]])
        _compare(rank, world, seed + i, 7, c, opts=opts, bias=i % 3 != 0, chunk=3 if i % 2 else 7)


@case(2, 4)
def distill_grid_V10(rank, world):  # W=2: 5, 5; W=4: 3, 3, 3, 1 classes; 7 tokens in chunks of 3 or 7
    _grid(rank, world, 10, 5000, full=True)


@case(4)
def distill_grid_V5(rank, world):  # an empty shard: 2, 2, 1, 0
    _grid(rank, world, 5, 5200, full=False)


@case(2, 4)
def distill_uneven_shards_and_options(rank, world):
    """Explicit uneven vocab_range (a rank with none at W=4), with and without num_classes; no target;
    soft_weight 0 (the hard part alone, at T != 1); both weights; -inf logits of masked classes (a
    whole shard of them) where every beta gives torch's inf / 0 log 0 = 0."""
    c = 11
    sizes = [7, 4] if world == 2 else [5, 0, 4, 2]
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    layout = dict(sl=sl, vocab_range=(sl.start, sl.stop))
    for i, ax in enumerate(grid(num=[None, c], beta=[0.0, 0.3, 1.0])):
        kw = dict(layout, num_classes=ax["num"]) if ax["num"] else dict(sl=sl)  # (without: the sizes' all_gather)
        opts = dict(beta=ax["beta"], temperature=1.3, softcap=3.0, hard_weight=0.4, soft_weight=0.8,
                    **_REDUCTIONS[i % 4])
        _compare(rank, world, 5400 + i, 6, c, opts=opts, chunk=2 if i % 2 else None, **kw)
    for i, opts in enumerate([dict(beta=0.5, temperature=0.8), dict(beta=0.0, reduction="none"),
                              dict(beta=1.0, reduction="sum", teacher_softcap=2.0)]):
        _compare(rank, world, 5450 + i, 6, c, opts=opts, with_target=False, num_classes=c, **layout)
    for i, opts in enumerate([dict(soft_weight=0.0, hard_weight=1.0, temperature=2.0),
                              dict(soft_weight=0.0, hard_weight=0.5, reduction="none", softcap=2.0)]):
        _compare(rank, world, 5460 + i, 6, c, opts=opts, num_classes=c, **layout)
    for i, reduction in enumerate(["mean", "none"]):  # every row ignored: 'mean' nan (0 / 0), gradients 0
        _compare(rank, world, 5465 + i, 5, c, opts=dict(beta=0.5, hard_weight=0.5, reduction=reduction),
                 ignore_every=1, num_classes=c, **layout)
    masked = tuple(range(c - sizes[-1], c)) + (0, 2)  # the last shard wholly masked, and two more
    for i, beta in enumerate([0.0, 0.5, 1.0]):
        _compare(rank, world, 5470 + i, 6, c, opts=dict(beta=beta, temperature=1.3, hard_weight=0.5,
                                                        reduction=_REDUCTIONS[i]["reduction"]),
                 masked=masked, num_classes=c, **layout)


@case(2, 4)
def distill_float32_no_grad_collectives_bits_memory(rank, world):
    """float32 with the default chunking; bfloat16 and autocast against crossent's own 16-bit call; no
    gradient equals the gradient path's value; per chunk 3
    all_reduces forward (num_classes given), 1 backward (none without an input gradient), 'none''s
    backward none but grad_x's; two runs bitwise equal, ranks agree (deterministic too); no tensor
    of N x V_r elements."""
    from torch.distributed.tensor.debug import CommDebugMode

    c = 12
    sl = vocab_slice(c, world, rank)
    opts = dict(beta=0.4, temperature=0.9, softcap=4.0, hard_weight=0.3)
    _compare(rank, world, 5500, 9, c, opts=opts, chunk=None, dtype=torch.float32, tol=dict(atol=2e-5, rtol=2e-5))
    for dtype in (torch.bfloat16, "autocast"):  # 16-bit products, float32 statistics: crossent's own 16-bit call
        x, w, b, xt, wt, bt, t, a = _problem(5505, 8, c, dtype=torch.float32 if dtype == "autocast" else dtype)
        outs = []
        for rows_ in (sl, slice(None)):
            xr, wr, br = _leaves(rows_, x, w, b)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "autocast"):
                if rows_ == sl:
                    loss = vp_ld(xr, wr, xt, wt[sl], linear_bias=br, teacher_linear_bias=bt[sl], target=t, **opts)
                else:
                    loss = crossent.linear_distillation_loss(xr, wr, xt, wt, linear_bias=br, teacher_linear_bias=bt,
                                                             target=t, **opts)
            outs.append((loss, *_grads(loss, a, (xr, wr, br))))
        assert outs[0][0].dtype == outs[1][0].dtype, (dtype, outs[0][0].dtype, outs[1][0].dtype)
        close(outs[0][0], outs[1][0], f"{dtype} loss", atol=1e-2, rtol=1e-2)
        for gm, gt, name in zip(outs[0][1:], (outs[1][1], outs[1][2][sl], outs[1][3][sl]), "xWb"):
            assert gm.dtype == gt.dtype, (dtype, name, gm.dtype, gt.dtype)
            close(gm, gt, f"{dtype} grad_{name}", atol=3e-2, rtol=3e-2)
    x, w, b, xt, wt, bt, t, a = _problem(5510, 8, c)
    with torch.no_grad():
        v0 = vp_ld(x, w[sl], xt, wt[sl], linear_bias=b[sl], teacher_linear_bias=bt[sl], target=t, chunk_size=3,
                   **opts)
    v1 = vp_ld(x, w[sl].clone().requires_grad_(), xt, wt[sl], linear_bias=b[sl], teacher_linear_bias=bt[sl],
               target=t, chunk_size=3, **opts)
    assert torch.equal(v0, v1.detach()), (v0, v1)

    def counts(mode):
        return {str(k).split(".")[-1]: v for k, v in mode.get_comm_counts().items()}

    for det in (False, True):
        runs = []
        for _ in range(2):
            x, w, b, xt, wt, bt, t, a = _problem(5520, 4 * world, c, dtype=torch.float32)
            xr, wr, br = _leaves(sl, x, w, b)
            fwd, bwd = CommDebugMode(), CommDebugMode()
            with fwd:  # 4 W tokens in chunks of 2 W: two chunks
                loss = vp_ld(xr, wr, xt, wt[sl], linear_bias=br, teacher_linear_bias=bt[sl], target=t,
                             num_classes=c, chunk_size=2 * world, deterministic=det, **opts)
            with bwd:
                grads = _grads(loss, a, (xr, wr, br))
            want = ([{"all_reduce": 2, "all_gather_into_tensor": 4}, {"all_gather_into_tensor": 1}] if det
                    else [{"all_reduce": 6}, {"all_reduce": 1}])
            assert [counts(fwd), counts(bwd)] == want, (det, counts(fwd), counts(bwd), want)
            runs.append((loss.detach(), *grads))
        assert all(torch.equal(p, q) for p, q in zip(*runs)), "two runs differ"
        for v in (runs[0][0], runs[0][1]):
            gathered = [torch.zeros_like(v) for _ in range(world)]
            dist.all_gather(gathered, v)
            assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree"
    bwd = CommDebugMode()
    loss = vp_ld(x, w[sl].clone().requires_grad_(), xt, wt[sl], target=t, num_classes=c, reduction="none",
                 beta=0.0, chunk_size=5)
    with bwd:
        loss.sum().backward()
    assert not bwd.get_comm_counts(), bwd.get_comm_counts()
    n, chunk, c = 256, 16, 64
    x, w, b, xt, wt, bt, t, a = _problem(5600, n, c, dtype=torch.float32)
    sl = vocab_slice(c, world, rank)
    xr, wr, br = _leaves(sl, x, w, b)
    for reduction in ("mean", "none"):
        mode = _Largest()
        with mode:
            loss = vp_ld(xr, wr, xt, wt[sl], linear_bias=br, teacher_linear_bias=bt[sl], target=t, beta=0.5,
                         temperature=0.9, softcap=5.0, hard_weight=0.5, chunk_size=chunk, num_classes=c,
                         reduction=reduction)
            _grads(loss, a, (xr, wr, br))
        v_r = sl.stop - sl.start
        bound = max(chunk * v_r, n * D, n * DT, 7 * n)  # (the saved per-token statistics: at most 7 x N)
        assert mode.numel <= bound < n * v_r, (reduction, mode.numel, bound, n * v_r)


@case(2, 4)
def distill_dtensor_heads(rank, world):
    """Both heads DTensors Shard(0) on a 1-D mesh (V=10 and V=5: uneven and empty shards at W=4),
    biases DTensors or none, input plain or a Replicate DTensor: the value and the student's .grad
    (a DTensor) equal the single-process call; the teacher gets no gradient."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    full = lambda v: v.full_tensor() if isinstance(v, DTensor) else v
    for i, ax in enumerate(grid(c=[10, 5], bias=[True, False], dt_input=[False, True])):
        x, w, b, xt, wt, bt, t, a = _problem(5700 + i, 6, ax["c"], bias=ax["bias"])
        shard = lambda v: distribute_tensor(v, mesh, [Shard(0)]) if v is not None else None
        wd, bd = shard(w).requires_grad_(), shard(b)
        if bd is not None:
            bd.requires_grad_()
        wtd, btd = shard(wt).requires_grad_(), shard(bt)
        xd = distribute_tensor(x, mesh, [Replicate()]) if ax["dt_input"] else x
        xd.requires_grad_()
        opts = dict(beta=0.5, temperature=0.8, hard_weight=0.4, **_REDUCTIONS[i % 4])
        loss = vp_ld(xd, wd, xt, wtd, linear_bias=bd, teacher_linear_bias=btd, target=t, chunk_size=4, **opts)
        assert isinstance(loss, DTensor) == ax["dt_input"], type(loss)
        ref_leaves = _leaves(slice(None), x, w, b)
        ref = crossent.linear_distillation_loss(ref_leaves[0], ref_leaves[1], xt, wt, linear_bias=ref_leaves[2],
                                                teacher_linear_bias=bt, target=t, **opts)
        close(full(loss), ref, f"DTensor loss {ax}")
        weights = a if ref.dim() else torch.tensor(1.7, dtype=torch.float64)
        lw = distribute_tensor(weights, mesh, [Replicate()]) if ax["dt_input"] else weights
        full((loss * lw).sum()).backward()
        (ref * weights).sum().backward()
        assert isinstance(wd.grad, DTensor) and wtd.grad is None, (type(wd.grad), wtd.grad)
        close(full(xd.grad), ref_leaves[0].grad, f"DTensor grad_x {ax}")
        close(full(wd.grad), ref_leaves[1].grad, f"DTensor grad_W {ax}")
        if bd is not None:
            close(full(bd.grad), ref_leaves[2].grad, f"DTensor grad_b {ax}")


@case(2)
def distill_errors(rank, world):
    """Heads with different shard sizes, a target outside the global classes, a bad vocab_range,
    options out of range, one head a DTensor, a second derivative: refused with the argument, the
    value and the remedy; a world of one rank is the single-device call."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from crossent._checks import InvalidArgument

    x, xt, w, wt = torch.randn(3, 4), torch.randn(3, 6), torch.randn(4, 4), torch.randn(4, 6)
    raises(lambda: vp_ld(x, w, xt, torch.randn(3, 6), num_classes=8), InvalidArgument,
           "teacher_linear_weight must hold the same vocabulary rows as linear_weight on each rank "
           "(this rank's linear_weight has 4 rows), got 3 rows")
    # one rank's teacher shard only: the gathered sizes refuse it on every rank (no rank left waiting)
    raises(lambda: vp_ld(x, w, xt, torch.randn(3 if rank == 1 else 4, 6)), InvalidArgument,
           "got 3 rows beside linear_weight's 4 on rank 1 of 2")
    raises(lambda: vp_ld(x, w, xt, torch.randn(4, 5)), InvalidArgument, "teacher_linear_weight must have shape")
    raises(lambda: vp_ld(x, w, torch.randn(2, 6), wt), InvalidArgument, "teacher_input must have one row per row")
    raises(lambda: vp_ld(x, w, xt, wt, target=torch.tensor([0, 8, 1]), hard_weight=1.0), ValueError,
           "target contains 8 at index (1,), outside the classes [0, 8)")
    raises(lambda: vp_ld(x, w, xt, wt, hard_weight=1.0), InvalidArgument, "hard_weight=1.0 needs target")
    raises(lambda: vp_ld(x, w, xt, wt, vocab_range=(0, 3), num_classes=8), InvalidArgument, "vocab_range must")
    raises(lambda: vp_ld(x, w, xt, wt, num_classes=10), InvalidArgument, "the default layout")
    raises(lambda: vp_ld(x, w, xt, wt, beta=1.5), InvalidArgument, "beta must be in [0, 1]")
    raises(lambda: vp_ld(x, w, xt, wt, temperature=0), ValueError, "temperature must be > 0, got 0.0")
    mesh = init_device_mesh("cpu", (world,))
    raises(lambda: vp_ld(x, distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)]), xt, wt), TypeError,
           "teacher_linear_weight must be a DTensor too")
    raises(lambda: vp_ld(x, distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)]), xt,
                         distribute_tensor(torch.randn(6, 6), mesh, [Shard(0)])), InvalidArgument,
           "teacher_linear_weight must be sharded as linear_weight")
    xr = x.clone().requires_grad_()
    loss = vp_ld(xr, w, xt, wt, num_classes=8)
    raises(lambda: torch.autograd.grad(loss, xr, create_graph=True), InvalidArgument, "second derivatives")
    groups = [dist.new_group([r]) for r in range(world)]  # (every rank creates every group)
    g = gen(5800)
    xs, ws, xts, wts = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 4), (6, 4), (5, 3), (6, 3)))
    ts = torch.randint(0, 6, (5,), generator=g)
    kw = dict(target=ts, beta=0.3, hard_weight=0.5, temperature=1.4)
    assert torch.equal(vp_ld(xs, ws, xts, wts, group=groups[rank], **kw),
                       crossent.linear_distillation_loss(xs, ws, xts, wts, **kw))


@case(2, 4)
def distill_module(rank, world):
    """VocabParallelLinearDistillationLoss: from_linear holds this rank's rows of a full nn.Linear;
    its loss and its parameters' gradients equal the single-process loss on the full layer; the
    default initialisation is nn.Linear's rows under one seed; a normalizer per call."""
    from crossent.distributed import VocabParallelLinearDistillationLoss

    c = 10
    sl = vocab_slice(c, world, rank)
    x, w, b, xt, wt, bt, t, a = _problem(5900, 6, c)
    linear = torch.nn.Linear(D, c, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(w), linear.bias.copy_(b)
    opts = dict(beta=0.3, temperature=1.2, hard_weight=0.5, softcap=3.0)
    head = VocabParallelLinearDistillationLoss.from_linear(linear, chunk_size=4, **opts)
    assert head.vocab_range == (sl.start, sl.stop) and head.linear_weight.shape == (sl.stop - sl.start, D)
    xr = x.clone().requires_grad_()
    loss = head(xr, xt, wt[sl], t, teacher_linear_bias=bt[sl], normalizer=7.0)
    loss.backward()
    ref_leaves = _leaves(slice(None), x, w, b)
    ref = crossent.linear_distillation_loss(ref_leaves[0], ref_leaves[1], xt, wt, linear_bias=ref_leaves[2],
                                            teacher_linear_bias=bt, target=t, normalizer=7.0, **opts)
    ref.backward()
    close(loss, ref, "module loss")
    close(xr.grad, ref_leaves[0].grad, "module grad_x")
    close(head.linear_weight.grad, ref_leaves[1].grad[sl], "module grad_W")
    close(head.linear_bias.grad, ref_leaves[2].grad[sl], "module grad_b")
    torch.manual_seed(0)
    fresh = VocabParallelLinearDistillationLoss(D, c, bias=True, dtype=torch.float64)
    torch.manual_seed(0)
    full = torch.nn.Linear(D, c, dtype=torch.float64)
    assert torch.equal(fresh.linear_weight, full.weight[sl]) and torch.equal(fresh.linear_bias, full.bias[sl])
    assert "beta=0.5" in repr(fresh)
