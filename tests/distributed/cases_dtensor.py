"""DTensor inputs on 1-D and 2-D (dp x tp) meshes, global_normalizer with unequal counts and two
micro-batches, and the head module under FSDP2."""

from __future__ import annotations

import torch
import torch.distributed as dist
from cases import case, close, gen, grid, probabilities, targets, vocab_slice
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

import crossent
from crossent import _torch_version
from crossent.distributed import (
    VocabParallelLinearCrossEntropyLoss,
    global_normalizer,
    vocab_parallel_cross_entropy,
)


def _full(x):
    return x.full_tensor() if isinstance(x, DTensor) else x


@case(2, 4)
def dtensor_1d_mesh(rank, world):
    """Shard(1) / Shard(-1) logits, K-dim Shard(1), soft targets Shard(1), Replicate targets and
    weights as DTensors or plain tensors; value and input.grad (a DTensor) equal crossent's."""
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    for i, a in enumerate(grid(reduction=["none", "sum", "mean"], soft=[False, True], extra=[(), (2,)],
                               dtensor_target=[False, True])):
        g = gen(2000 + i)
        c = 10 if i % 2 else 5
        x = torch.randn(6, c, *a["extra"], generator=g, dtype=torch.float64) * 2
        w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
        t = probabilities(g, x.shape) if a["soft"] else targets(g, (6, *a["extra"]), c)
        shard = Shard(1) if a["extra"] or i % 4 else Shard(-1)
        xd = distribute_tensor(x, mesh, [shard]).requires_grad_()
        if a["soft"]:
            td = distribute_tensor(t, mesh, [Shard(1)]) if a["dtensor_target"] else t[:, vocab_slice(c, world, rank)]
        else:
            td = distribute_tensor(t, mesh, [Replicate()]) if a["dtensor_target"] else t
        wd = distribute_tensor(w, mesh, [Replicate()]) if a["dtensor_target"] else w
        opts = dict(reduction=a["reduction"], label_smoothing=0.1, z_loss=0.01, softcap=3.0)
        loss = vocab_parallel_cross_entropy(xd, td, wd, **opts)
        assert isinstance(loss, DTensor) and all(p.is_replicate() for p in loss.placements)
        xf = x.clone().requires_grad_()
        ref = crossent.cross_entropy(xf, t, w, **opts)
        close(loss.full_tensor(), ref, f"loss {a}")
        grad_out = torch.rand(ref.shape, generator=g, dtype=torch.float64) + 0.5
        loss.backward(distribute_tensor(grad_out, mesh, [Replicate()]))
        ref.backward(grad_out)
        assert isinstance(xd.grad, DTensor)
        # torch < 2.13 gives the gradient of an unevenly sharded DTensor (C % world != 0) the
        # stride of an even split, and autograd's accumulation then gathers it into a Replicate
        # DTensor: the same values, but the whole gradient on every rank
        if _torch_version.TORCH >= (2, 13) or c % world == 0:
            assert xd.grad.placements == xd.placements, (xd.grad.placements, xd.placements)
        close(xd.grad.full_tensor(), xf.grad, f"grad {a}")


def _mesh_2d(world):
    return init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))


@case(4)
def dtensor_2d_mesh_unequal_counts(rank, world):
    """[Shard(0), Shard(1)] logits over dp x tp, uneven dp shards (7 rows: 4, 3) and one dp rank
    with every target ignored: 'mean' is the global mean (the 2 numbers summed over dp), 'none'
    stays Shard(0); gradients exact."""
    mesh = _mesh_2d(world)
    for i, (reduction, weighted, eps) in enumerate(
        [(r, w, e) for r in ("none", "sum", "mean") for w in (False, True) for e in (0.0, 0.1)]
    ):
        g = gen(2100 + i)
        c = 7
        x = torch.randn(7, c, generator=g, dtype=torch.float64) * 2
        t = targets(g, (7,), c)
        t[4:] = -100  # dp rank 1 (rows 4..6): nothing counted there
        w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5 if weighted else None
        xd = distribute_tensor(x, mesh, [Shard(0), Shard(1)]).requires_grad_()
        td = distribute_tensor(t, mesh, [Shard(0), Replicate()])
        opts = dict(reduction=reduction, label_smoothing=eps, z_loss=0.01)
        counter = CommDebugMode()
        with counter:
            loss = vocab_parallel_cross_entropy(xd, td, w, **opts)
        # 2 over tp (max, stacked sums) + 1 over dp for a scalar (sum and count together)
        assert counter.get_total_counts() == (2 if reduction == "none" else 3), counter.get_comm_counts()
        xf = x.clone().requires_grad_()
        ref = crossent.cross_entropy(xf, t, w, **opts)
        expected = (Shard(0), Replicate()) if reduction == "none" else (Replicate(), Replicate())
        assert tuple(loss.placements) == expected, loss.placements
        close(loss.full_tensor(), ref, f"loss {reduction} {weighted} {eps}")
        (loss.sum() if reduction == "none" else loss).backward()
        (ref.sum() if reduction == "none" else ref).backward()
        close(xd.grad.full_tensor(), xf.grad, f"grad {reduction} {weighted} {eps}")


@case(4)
def dtensor_2d_two_micro_batches_normalizer(rank, world):
    """Two micro-batches with global_normalizer over dp equal the single-process mean of both,
    on the DTensor path and on the local path (group = tp; per-dp-rank losses summed)."""
    mesh = _mesh_2d(world)
    g = gen(2200)
    c = 10
    xs = [torch.randn(n, c, generator=g, dtype=torch.float64) * 2 for n in (6, 5)]
    ts = [targets(g, (n,), c, ignore_every=3) for n in (6, 5)]
    ts[1][:3] = -100  # unequal counts between dp ranks and micro-batches
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    x_all = torch.cat(xs).requires_grad_()
    ref = crossent.cross_entropy(x_all, torch.cat(ts), w, label_smoothing=0.1)
    ref.backward()
    ref_grads = x_all.grad.split([6, 5])
    dp = mesh.get_group("dp")
    tp = mesh.get_group("tp")
    dp_rank, tp_rank = mesh.get_local_rank(0), mesh.get_local_rank(1)
    # DTensor path
    xds = [distribute_tensor(x, mesh, [Shard(0), Shard(1)]).requires_grad_() for x in xs]
    tds = [distribute_tensor(t, mesh, [Shard(0), Replicate()]) for t in ts]
    norm = global_normalizer(tds, group=dp, weight=w)
    close(norm, torch.cat([w[t[t != -100]] for t in ts]).sum(), "normalizer")
    # group=None with DTensor targets: summed over their Shard(0) dim only, not the tp copies
    close(global_normalizer(tds, group=None, weight=w), norm, "normalizer from the placements")
    close(global_normalizer(tds, group=None), sum((t != -100).sum() for t in ts).double(), "count")
    total = sum(vocab_parallel_cross_entropy(xd, td, w, label_smoothing=0.1, normalizer=norm)
                for xd, td in zip(xds, tds))
    close(total.full_tensor(), ref, "DTensor micro-batches")
    total.backward()
    for xd, rg in zip(xds, ref_grads):
        close(xd.grad.full_tensor(), rg, "DTensor micro-batch grad")
    # local path: this dp rank's rows, this tp rank's classes
    local_sum = 0.0
    grads = []
    for x, t, rg in zip(xs, ts, ref_grads):
        rows = torch.arange(x.shape[0]).tensor_split(2)[dp_rank]
        cols = vocab_slice(c, world // 2, tp_rank)
        xr = x[rows][:, cols].clone().requires_grad_()
        tr = t[rows]
        norm_local = global_normalizer([tt[torch.arange(tt.shape[0]).tensor_split(2)[dp_rank]] for tt in ts],
                                       group=dp, weight=w)
        loss = vocab_parallel_cross_entropy(xr, tr, w, label_smoothing=0.1, group=tp, normalizer=norm_local)
        loss.backward()
        local_sum = local_sum + loss.detach()
        grads.append((xr.grad, rg[rows][:, cols]))
    dist.all_reduce(local_sum, group=dp)  # the data-parallel sum (FSDP2 with divide factor 1)
    close(local_sum, ref, "local micro-batches summed over dp")
    for got, want in grads:
        close(got, want, "local micro-batch grad")


class _Net(torch.nn.Module):
    def __init__(self, body, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x, t, normalizer):
        return self.head(torch.tanh(self.body(x)), t, normalizer=normalizer)


@case(4)
def fsdp2_head_module_dp_tp(rank, world):
    """VocabParallelLinearCrossEntropyLoss fully_shard-ed over dp, vocab-parallel over tp, unequal
    counts per dp rank, global_normalizer + set_gradient_divide_factor(1.0): every parameter's
    gradient equals the single-process model's; a functional call on the FSDP2 weight (a DTensor
    sharded over the dp ranks) with the vocabulary's group refuses."""
    from torch.distributed.fsdp import fully_shard

    from crossent._checks import InvalidArgument
    from crossent.distributed import vocab_parallel_linear_cross_entropy

    mesh = _mesh_2d(world)
    torch.manual_seed(0)
    d0, d, c, n = 5, 6, 10, 8
    body, full_head = torch.nn.Linear(d0, d).double(), torch.nn.Linear(d, c).double()
    g = gen(2300)
    x = torch.randn(n, d0, generator=g, dtype=torch.float64)
    t = targets(g, (n,), c, ignore_every=3)
    t[:3] = -100
    opts = dict(label_smoothing=0.1, z_loss=0.01)
    ref_body = torch.nn.Linear(d0, d).double()
    ref_body.load_state_dict(body.state_dict())
    ref_w = full_head.weight.detach().clone().requires_grad_()
    ref_b = full_head.bias.detach().clone().requires_grad_()
    ref = crossent.linear_cross_entropy(torch.tanh(ref_body(x)), ref_w, t, linear_bias=ref_b, **opts)
    ref.backward()
    head = VocabParallelLinearCrossEntropyLoss.from_linear(full_head, group=mesh.get_group("tp"), **opts)
    net = _Net(body, head)
    fully_shard(net.head, mesh=mesh["dp"])
    fully_shard(net, mesh=mesh["dp"])
    for module in (net, net.head):
        module.set_gradient_divide_factor(1.0)  # the loss is already divided by the global count
    dp_rank = mesh.get_local_rank(0)
    rows = torch.arange(n).tensor_split(2)[dp_rank]
    norm = global_normalizer(t[rows], group=mesh.get_group("dp"))
    loss = net(x[rows], t[rows], norm)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total, group=mesh.get_group("dp"))
    close(total, ref, "loss")
    start, stop = head.vocab_range
    close(net.head.linear_weight.grad.full_tensor(), ref_w.grad[start:stop], "head weight grad")
    close(net.head.linear_bias.grad.full_tensor(), ref_b.grad[start:stop], "head bias grad")
    close(net.body.weight.grad.full_tensor(), ref_body.weight.grad, "body weight grad")
    close(net.body.bias.grad.full_tensor(), ref_body.bias.grad, "body bias grad")
    try:
        vocab_parallel_linear_cross_entropy(torch.randn(2, d, dtype=torch.float64), net.head.linear_weight,
                                            t[:2], group=mesh.get_group("tp"), num_classes=c)
    except InvalidArgument as err:
        assert "sharded over mesh dim 0" in str(err) and "FSDP2" in str(err), str(err)
    else:
        raise AssertionError("an FSDP2 weight was accepted by the functional")


@case(2)
def dtensor_errors(rank, world):
    """Placements the loss cannot serve are refused with the rule; so are misplaced targets."""
    from crossent._checks import InvalidArgument

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.tensor([0, 5, 2, -100])
    bad_inputs = [distribute_tensor(x, mesh, [Shard(0)]), distribute_tensor(x, mesh, [Replicate()])]
    for xd in bad_inputs:
        try:
            vocab_parallel_cross_entropy(xd, t)
        except InvalidArgument as err:
            assert "sharded on its class dim" in str(err), str(err)
        else:
            raise AssertionError(f"placements {xd.placements} accepted")
    # a replicated DTensor class weight is taken beside a plain local input; a sharded one is refused
    w = torch.rand(6, dtype=torch.float64)
    sl = vocab_slice(6, world, rank)
    close(vocab_parallel_cross_entropy(x[:, sl], t, distribute_tensor(w, mesh, [Replicate()])),
          crossent.cross_entropy(x, t, w), "DTensor weight")
    try:
        vocab_parallel_cross_entropy(x[:, sl], t, distribute_tensor(w, mesh, [Shard(0)]))
    except InvalidArgument as err:
        assert "Replicate" in str(err), str(err)
    else:
        raise AssertionError("a sharded class weight accepted")
    xd = distribute_tensor(x, mesh, [Shard(1)])
    try:  # class indices must be replicated over the vocabulary mesh dim
        vocab_parallel_cross_entropy(xd, distribute_tensor(t.clamp(min=0), mesh, [Shard(0)]))
    except InvalidArgument as err:
        assert "must be placed" in str(err), str(err)
    else:
        raise AssertionError("a sharded class-index target accepted")
