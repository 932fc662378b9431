"""vocab_parallel_linear_cross_entropy on a DTensor head (ColwiseParallel's lm_head: the weight
Shard(0) on the TP mesh dim), as vocab_parallel_linear_log_probs takes one (`_dtensor_head`): the
loss and the gradients equal single-process crossent.linear_cross_entropy on the full tensors, the
weight's (and bias's) .grad a DTensor; 1-D meshes with even, uneven and empty shards, plain or
DTensor input / target / bias, every reduction with the loss's options; a 2-D (dp x tp) mesh with
distinct tokens and unequal counts per dp rank (the 'mean' over all of them), reduce_input_grad=False
(the input's gradient Partial on tp); the refusals."""

from __future__ import annotations

import torch
from cases import case, close, gen, grid, raises, targets, vocab_slice
from dtensor_helpers import check_head_grads
from dtensor_helpers import full as _full
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import crossent
from crossent.distributed import vocab_parallel_linear_cross_entropy as vp_lce


def _problem(seed, n, d, c, *, bias, weighted):
    g = gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.8
    b = torch.randn(c, generator=g, dtype=torch.float64) if bias else None
    cw = torch.rand(c, generator=g, dtype=torch.float64).add_(0.5) if weighted else None
    t = targets(g, (n,), c, ignore_every=3)
    return g, x, w, b, cw, t


def _reference(x, w, b, t, cw, opts, grad_out):
    leaves = [v.clone().requires_grad_() if v is not None else None for v in (x, w, b)]
    loss = crossent.linear_cross_entropy(leaves[0], leaves[1], t, linear_bias=leaves[2], weight=cw, **opts)
    loss.backward(grad_out)
    return loss, [v.grad if v is not None else None for v in leaves]


def _check(x, w, b, t, cw, opts, xd, wd, bd, td, what, *, grad_out, bias_rows=None, chunk=3, **kw):
    """The call on the DTensor operands against the full single-process one; grad_out: the full
    upstream gradient (placed as the loss). bias_rows: the full bias's rows of a plain bias."""
    loss = vp_lce(xd, wd, td, linear_bias=bd, group=None, weight=cw, chunk_size=chunk, **opts, **kw)
    ref, ref_grads = _reference(x, w, b, t, cw, opts, grad_out)
    assert isinstance(loss, DTensor) == isinstance(xd, DTensor), (type(loss), what)
    close(_full(loss), ref, f"loss {what}")
    if isinstance(loss, DTensor):
        want = (Replicate(),) * len(xd.placements) if ref.dim() == 0 else tuple(xd.placements)
        assert tuple(loss.placements) == want, (loss.placements, want, what)  # (scalar: the global loss)
        loss.backward(distribute_tensor(grad_out, loss.device_mesh, loss.placements))
    else:
        loss.backward(grad_out)
    check_head_grads(xd, wd, bd, ref_grads, bias_rows, what)


@case(2, 4)
def linear_dtensor_head_1d(rank, world):
    """Weight Shard(0) (V=10: 3,3,3,1 at W=4; V=5: an empty shard at W=4), bias DTensor / this
    rank's plain rows / none, input and target plain or DTensor Replicate, each reduction with
    label smoothing, z-loss, softcap and a class weight in turn."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    axes = grid(c=[10, 5], bias=["dtensor", "plain", None], dt_input=[False, True], reduction=["mean", "sum", "none"])
    extras = [{}, dict(label_smoothing=0.1), dict(z_loss=0.01, softcap=2.5), dict(label_smoothing=0.05, z_loss=0.02)]
    for i, ax in enumerate(axes):
        g, x, w, b, cw, t = _problem(4500 + i, 7, 4, ax["c"], bias=ax["bias"] is not None, weighted=i % 3 == 0)
        opts = dict(reduction=ax["reduction"], **extras[i % len(extras)])
        wd = distribute_tensor(w, mesh, [Shard(0)]).requires_grad_()
        bd = None
        if ax["bias"] == "dtensor":
            bd = distribute_tensor(b, mesh, [Shard(0)]).requires_grad_()
        elif ax["bias"] == "plain":
            bd = distribute_tensor(b, mesh, [Shard(0)]).to_local().clone().requires_grad_()
        td = distribute_tensor(t, mesh, [Replicate()]) if i % 2 else t
        xd = (distribute_tensor(x, mesh, [Replicate()]) if ax["dt_input"] else x.clone()).requires_grad_()
        grad_out = torch.rand(() if ax["reduction"] != "none" else (7,), generator=g, dtype=torch.float64) + 0.5
        _check(x, w, b, t, cw, opts, xd, wd, bd, td, f"{ax} {opts}", grad_out=grad_out,
               bias_rows=vocab_slice(ax["c"], world, rank))


@case(4)
def linear_dtensor_head_2d(rank, world):
    """A (dp=2, tp=2) mesh: weight (Shard(0) on tp, Replicate on dp), input Shard(0) on dp
    (distinct tokens, unequal counts of ignored ones) and Replicate on tp: the 'mean' and 'sum'
    over every token on every rank (Replicate), 'none' Shard(0) on dp; grad_W the sum over every
    token (Partial on dp until reduced); reduce_input_grad=False: grad_x Partial on tp, summed by
    DTensor; a plain input is the same tokens on every rank."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    cases = grid(c=[9, 4], reduction=["mean", "sum", "none"], reduce=[True, False])
    for i, ax in enumerate(cases):
        g, x, w, b, cw, t = _problem(4600 + i, 8, 5, ax["c"], bias=True, weighted=i % 2 == 1)
        t[:3] = -100  # dp rank 0 holds fewer counted tokens than dp rank 1
        opts = dict(reduction=ax["reduction"], label_smoothing=0.1 if i % 3 else 0.0, softcap=3.0 if i % 2 else None)
        wd = distribute_tensor(w, mesh, [Replicate(), Shard(0)]).requires_grad_()
        bd = distribute_tensor(b, mesh, [Replicate(), Shard(0)]).requires_grad_()
        xd = distribute_tensor(x, mesh, [Shard(0), Replicate()]).requires_grad_()
        td = distribute_tensor(t, mesh, [Shard(0), Replicate()])
        td = td if i % 2 else td.to_local()  # (a plain target: this rank's tokens)
        grad_out = torch.rand(() if ax["reduction"] != "none" else (8,), generator=g, dtype=torch.float64) + 0.5
        _check(x, w, b, t, cw, opts, xd, wd, bd, td, f"2-D {ax} {opts}", grad_out=grad_out, chunk=None,
               reduce_input_grad=ax["reduce"])
        placed = tuple(type(p).__name__ for p in xd.grad.placements)
        assert placed == (("Shard", "Replicate") if ax["reduce"] else ("Shard", "Partial")), (placed, ax)
    g, x, w, b, cw, t = _problem(4700, 6, 5, 7, bias=False, weighted=False)
    wd = distribute_tensor(w, mesh, [Replicate(), Shard(0)]).requires_grad_()
    _check(x, w, None, t, None, dict(reduction="mean"), x.clone().requires_grad_(), wd, None, t, "2-D plain input",
           grad_out=torch.tensor(1.3, dtype=torch.float64))
    assert tuple(type(p) for p in wd.grad.placements) == (Replicate, Shard), wd.grad.placements


@case(4)
def linear_dtensor_head_errors(rank, world):
    """The DTensor head's refusals, through the linear loss: FSDP2 on TP (dim 0 sharded twice), a
    weight sharded on D, another group (an FSDP2 weight's dp group is not the vocabulary's), a
    contradicting vocab_range / num_classes, an input sharded on the TP dim, a DTensor bias beside a
    plain weight, sequence parallelism on a DTensor input; a ZeRO-3 placeholder is still refused."""
    from crossent._checks import InvalidArgument, InvalidArgumentType

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    g = gen(4800)  # (the same full tensors on every rank)
    w, x = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 8, (6,), generator=g)
    raises(lambda: vp_lce(x, distribute_tensor(w, mesh, [Shard(0), Shard(0)]), t, group=None), InvalidArgument,
           "must be sharded by exactly one mesh dim")
    raises(lambda: vp_lce(x, distribute_tensor(w, mesh, [Replicate(), Shard(1)]), t, group=None), InvalidArgument,
           "must be sharded by exactly one mesh dim")
    wd = distribute_tensor(w, mesh, [Replicate(), Shard(0)])
    raises(lambda: vp_lce(x, wd, t, group=mesh["dp"].get_group()), InvalidArgument,
           "pass group=None (the weight's shard group)")
    raises(lambda: vp_lce(x, wd, t, group=None, vocab_range=(0, 1)), InvalidArgument, "pass vocab_range=None")
    raises(lambda: vp_lce(x, wd, t, group=None, num_classes=9), InvalidArgument, "pass num_classes=None")
    raises(lambda: vp_lce(distribute_tensor(x, mesh, [Replicate(), Shard(0)]), wd, t, group=None), InvalidArgument,
           "Replicate on that dim")
    bd = distribute_tensor(torch.randn(8, generator=g, dtype=torch.float64), mesh, [Replicate(), Shard(0)])
    raises(lambda: vp_lce(x, w[:2], t, linear_bias=bd, group=None), InvalidArgumentType, "linear_bias is a DTensor")
    raises(lambda: vp_lce(distribute_tensor(x, mesh, [Replicate(), Replicate()]), wd, t, group=None,
                          sequence_parallel=True), InvalidArgument, "sequence_parallel=True with a DTensor input")
    zero = torch.nn.Parameter(torch.empty(0))
    zero.ds_id, zero.ds_status, zero.ds_shape = 3, "NOT_AVAILABLE", (8, 4)
    raises(lambda: vp_lce(x, zero, t, group=None), InvalidArgumentType, "ZeRO-3")
    # the same group given explicitly, and the layout restated, are accepted
    loss = vp_lce(x, wd, t, group=mesh["tp"].get_group(), num_classes=8, vocab_range=None)
    close(loss, crossent.linear_cross_entropy(x, w, t), "explicit group")
