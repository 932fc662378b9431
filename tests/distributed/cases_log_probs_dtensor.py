"""vocab_parallel_linear_log_probs on a DTensor head (ColwiseParallel's lm_head: the weight Shard(0)
on the TP mesh dim): both outputs and the gradients of a combined loss equal single-process
crossent.linear_log_probs on the full tensors, the weight's (and bias's) .grad a DTensor; 1-D
meshes with even, uneven and empty shards, plain or DTensor input / target / bias; a 2-D
(dp x tp) mesh with distinct tokens per dp rank; the refusals."""

from __future__ import annotations

import torch
from cases import case, close, gen, grid, raises, vocab_slice
from dtensor_helpers import check_head_grads
from dtensor_helpers import full as _full
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

import crossent
from crossent.distributed import vocab_parallel_linear_log_probs as vp_llp


def _problem(seed, lead, d, c, bias):
    g = gen(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.8
    b = torch.randn(c, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, c, lead, generator=g)
    t.view(-1)[1::3] = -100
    return x, w, b, t, torch.randn(lead, generator=g, dtype=torch.float64), torch.randn(lead, generator=g,
                                                                                       dtype=torch.float64)


def _reference(x, w, b, t, a, cc, opts):
    leaves = [v.clone().requires_grad_() if v is not None else None for v in (x, w, b)]
    out = crossent.linear_log_probs(leaves[0], leaves[1], t, linear_bias=leaves[2], **opts)
    lp, h = out if opts["return_entropy"] else (out, None)
    total = (lp * a).sum() + ((h * cc).sum() if h is not None else 0.0)
    total.backward()
    return out, [v.grad if v is not None else None for v in leaves]


def _check(x, w, b, t, a, cc, opts, xd, wd, bd, td, what, chunk=3, bias_rows=None):
    """The call on the DTensor operands against the full single-process one. bias_rows: the
    full bias's rows of a plain (this rank's) bias."""
    out = vp_llp(xd, wd, td, linear_bias=bd, chunk_size=chunk, **opts)
    ref, ref_grads = _reference(x, w, b, t, a, cc, opts)
    outs = out if opts["return_entropy"] else (out,)
    refs = ref if opts["return_entropy"] else (ref,)
    for o, r in zip(outs, refs):
        assert isinstance(o, DTensor) == isinstance(xd, DTensor), (type(o), what)
        close(_full(o), r, f"output {what}")
    lp = outs[0]
    total = (lp * (_like(a, lp))).sum()
    if opts["return_entropy"]:
        total = total + (outs[1] * _like(cc, outs[1])).sum()
    total = _full(total)
    total.backward()
    check_head_grads(xd, wd, bd, ref_grads, bias_rows, what)


def _like(v, out):
    """A per-token weight placed as the output (a plain one for a plain output)."""
    if not isinstance(out, DTensor):
        return v
    return distribute_tensor(v, out.device_mesh, out.placements)


@case(2, 4)
def log_probs_dtensor_head_1d(rank, world):
    """Weight Shard(0) (V=10: 3,3,3,1 at W=4; V=5: an empty shard at W=4), bias DTensor / this
    rank's plain rows / none, input and target plain or DTensor Replicate, both outputs or one."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    axes = grid(c=[10, 5], bias=["dtensor", "plain", None], dt_input=[False, True], entropy=[True, False])
    for i, ax in enumerate(axes):
        x, w, b, t, a, cc = _problem(4000 + i, (2, 3) if i % 2 else (7,), 4, ax["c"], ax["bias"] is not None)
        opts = dict(temperature=0.8 if i % 3 else 1.0, softcap=3.0 if i % 4 == 1 else None,
                    return_entropy=ax["entropy"])
        wd = distribute_tensor(w, mesh, [Shard(0)]).requires_grad_()
        bd = None
        if ax["bias"] == "dtensor":
            bd = distribute_tensor(b, mesh, [Shard(0)]).requires_grad_()
        elif ax["bias"] == "plain":
            bd = distribute_tensor(b, mesh, [Shard(0)]).to_local().clone().requires_grad_()
        if ax["dt_input"]:
            xd = distribute_tensor(x, mesh, [Replicate()]).requires_grad_()
            td = distribute_tensor(t, mesh, [Replicate()]) if i % 2 else t
        else:
            xd, td = x.clone().requires_grad_(), distribute_tensor(t, mesh, [Replicate()]) if i % 2 else t
        _check(x, w, b, t, a, cc, opts, xd, wd, bd, td, f"{ax} {opts}", bias_rows=vocab_slice(ax["c"], world, rank))


@case(4)
def log_probs_dtensor_head_2d(rank, world):
    """A (dp=2, tp=2) mesh: weight (Shard(0) on tp, Replicate on dp), input Shard(0) on dp (distinct
    sequences) and Replicate on tp: outputs Shard(0) on dp; grad_W the sum over every sequence
    (Partial on dp until reduced)."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    for i, c in enumerate((9, 4)):
        x, w, b, t, a, cc = _problem(4100 + i, (4, 3), 5, c, True)
        opts = dict(temperature=0.9, softcap=2.5 if i else None, return_entropy=True)
        wd = distribute_tensor(w, mesh, [Replicate(), Shard(0)]).requires_grad_()
        bd = distribute_tensor(b, mesh, [Replicate(), Shard(0)]).requires_grad_()
        xd = distribute_tensor(x, mesh, [Shard(0), Replicate()]).requires_grad_()
        td = distribute_tensor(t, mesh, [Shard(0), Replicate()])
        _check(x, w, b, t, a, cc, opts, xd, wd, bd, td, f"2-D c={c}", chunk=None)


@case(4)
def log_probs_dtensor_head_errors(rank, world):
    """FSDP2 on TP (dim 0 sharded twice), a weight sharded on D, another group, a contradicting
    vocab_range / num_classes, an input sharded on the TP dim or its features, a DTensor bias beside
    a plain weight."""
    from crossent._checks import InvalidArgument, InvalidArgumentType

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    g = gen(4200)  # (the same full tensors on every rank)
    w, x = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 8, (6,), generator=g)
    twice = distribute_tensor(w, mesh, [Shard(0), Shard(0)])
    raises(lambda: vp_llp(x, twice, t), InvalidArgument, "must be sharded by exactly one mesh dim")
    raises(lambda: vp_llp(x, distribute_tensor(w, mesh, [Replicate(), Shard(1)]), t), InvalidArgument,
            "must be sharded by exactly one mesh dim")
    wd = distribute_tensor(w, mesh, [Replicate(), Shard(0)])
    raises(lambda: vp_llp(x, wd, t, group=mesh["dp"].get_group()), InvalidArgument,
            "pass group=None (the weight's shard group)")
    raises(lambda: vp_llp(x, wd, t, vocab_range=(0, 1)), InvalidArgument, "pass vocab_range=None")
    raises(lambda: vp_llp(x, wd, t, num_classes=9), InvalidArgument, "pass num_classes=None")
    for placements in ([Replicate(), Shard(0)], [Replicate(), Shard(1)], [Shard(1), Replicate()]):
        xd = distribute_tensor(x, mesh, placements)
        raises(lambda: vp_llp(xd, wd, t), InvalidArgument, "Replicate on that dim")
    bd = distribute_tensor(torch.randn(8, generator=g), mesh, [Replicate(), Shard(0)])
    raises(lambda: vp_llp(x, w[:2], t, linear_bias=bd), InvalidArgumentType, "linear_bias is a DTensor")
    raises(lambda: vp_llp(x, wd, t, linear_bias=distribute_tensor(torch.randn(8, generator=g), mesh, [Replicate(), Replicate()])),
            InvalidArgument, "linear_bias is a DTensor placed")
    td = distribute_tensor(t, mesh, [Shard(0), Replicate()])
    raises(lambda: vp_llp(x, wd, td), InvalidArgument, "target is a DTensor placed")
    # the same group given explicitly, and the layout restated, are accepted
    lp = vp_llp(x, wd, t, group=mesh["tp"], num_classes=8)
    close(lp, crossent.linear_log_probs(x, w, t), "explicit group")
