"""vocab_parallel_linear_cross_entropy on weight shards: the option grid, K-dim heads, sequence
parallelism, reduce_input_grad=False, chunking memory, collective counts, determinism, errors."""

from __future__ import annotations

import torch
import torch.distributed as dist
from cases import case, close, gen, grid, probabilities, targets, vocab_slice
from torch.utils._python_dispatch import TorchDispatchMode

import crossent
from crossent.distributed import vocab_parallel_linear_cross_entropy as vp_lce

GROUP = None  # the default group: all ranks share the vocabulary


def _problem(seed, n, d, c, out=(), *, soft, weighted, bias, dtype=torch.float64):
    g = gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, *out, d, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = torch.randn(c, *out, generator=g, dtype=torch.float64).to(dtype) if bias else None
    cw = torch.rand(c, generator=g, dtype=torch.float64).add_(0.5).to(dtype) if weighted else None
    t = probabilities(g, (n, c, *out)).to(dtype) if soft else targets(g, (n, *out), c)
    return g, x, w, b, cw, t


def _compare(rank, world, seed, n, d, c, out, opts, *, soft, weighted, bias, sp=False, reduce=True,
             chunk=3, tol=None, kw=None):
    g, x, w, b, cw, t = _problem(seed, n, d, c, out, soft=soft, weighted=weighted, bias=bias)
    sl = vocab_slice(c, world, rank)
    rows = slice(rank * (n // world), (rank + 1) * (n // world)) if sp else slice(None)
    xr = x[rows].clone().requires_grad_()
    wr = w[sl].clone().requires_grad_()
    br = b[sl].clone().requires_grad_() if bias else None
    tr = t[:, sl] if soft else t
    loss = vp_lce(xr, wr, tr, linear_bias=br, group=GROUP, weight=cw, chunk_size=chunk,
                  sequence_parallel=sp, reduce_input_grad=reduce, **opts, **(kw or {}))
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    bf = b.clone().requires_grad_() if bias else None
    ref = crossent.linear_cross_entropy(xf, wf, t, linear_bias=bf, weight=cw,
                                        ignore_index=None if soft else -100, **opts)
    what = f"V={c} out={out} soft={soft} weighted={weighted} bias={bias} sp={sp} {opts}"
    tol = tol or {}
    close(loss, ref, "loss " + what, **tol)
    grad_out = torch.rand(ref.shape, generator=g, dtype=torch.float64).add_(0.5).to(ref.dtype)
    loss.backward(grad_out)
    ref.backward(grad_out)
    gx = xr.grad
    if not reduce:  # the caller's framework sums the partial input gradients
        gx = gx.clone()
        dist.all_reduce(gx)
    close(gx, xf.grad[rows], "grad_x " + what, **tol)
    close(wr.grad, wf.grad[sl], "grad_W " + what, **tol)
    if bias:
        close(br.grad, bf.grad[sl], "grad_b " + what, **tol)


def _grid(rank, world, c, seed):
    axes = grid(reduction=["none", "sum", "mean"], weighted=[False, True], eps=[0.0, 0.1],
                soft=[False, True], extra=[{}, {"z_loss": 0.01, "softcap": 2.5}])
    for i, a in enumerate(axes):
        opts = dict(reduction=a["reduction"], label_smoothing=a["eps"], **a["extra"])
        _compare(rank, world, seed + i, 7, 5, c, (), opts, soft=a["soft"], weighted=a["weighted"],
                 bias=i % 2 == 0)


@case(2, 4)
def linear_grid_V10(rank, world):  # W=4: 3, 3, 3, 1; 7 tokens in chunks of 3
    _grid(rank, world, 10, 1000)


@case(4)
def linear_grid_V5(rank, world):  # an empty shard: 2, 2, 1, 0
    _grid(rank, world, 5, 1100)


@case(2, 4)
def linear_heads_sp_partial_grad(rank, world):
    """K-dim heads (V_r, 3, D); sequence parallelism (input and grad_x split by rank);
    reduce_input_grad=False (partial grad_x, summed by the caller); a normalizer; float32."""
    for i, a in enumerate(grid(reduction=["none", "mean"], soft=[False, True])):
        opts = dict(reduction=a["reduction"], label_smoothing=0.1, z_loss=0.01, softcap=3.0)
        _compare(rank, world, 1200 + i, 5, 4, 7, (3,), opts, soft=a["soft"], weighted=True, bias=True)
    for i, a in enumerate(grid(reduction=["none", "sum", "mean"], soft=[False, True])):
        opts = dict(reduction=a["reduction"], label_smoothing=0.1)
        _compare(rank, world, 1300 + i, 2 * world, 4, 10, (), opts, soft=a["soft"], weighted=True,
                 bias=True, sp=True)
        _compare(rank, world, 1350 + i, 6, 4, 10, (), opts, soft=a["soft"], weighted=False,
                 bias=True, reduce=False)
    for sp in (False, True):  # deterministic=True: rank-order sums of the statistics and grad_x
        _compare(rank, world, 1380, 2 * world, 4, 10, (), dict(reduction="mean", label_smoothing=0.1),
                 soft=False, weighted=True, bias=True, sp=sp, kw=dict(deterministic=True))
    for normalizer in (11.0, torch.tensor(13.0, dtype=torch.float64)):
        _compare(rank, world, 1400, 6, 4, 10, (), dict(reduction="mean", normalizer=normalizer),
                 soft=False, weighted=True, bias=False, chunk=None)
    # float32 with the default chunking, against the float64 reference's values
    _compare(rank, world, 1450, 9, 8, 10, (), dict(reduction="mean", label_smoothing=0.1),
             soft=False, weighted=True, bias=True, chunk=None, tol=dict(atol=1e-5, rtol=1e-5))
    # bfloat16 products, the float32 loss (dtype=), against crossent's own bfloat16 fused loss
    _, x, w, b, _, t = _problem(1460, 8, 16, 10, soft=False, weighted=False, bias=True, dtype=torch.bfloat16)
    sl = vocab_slice(10, world, rank)
    xr, wr, br = x.clone().requires_grad_(), w[sl].clone().requires_grad_(), b[sl].clone().requires_grad_()
    loss = vp_lce(xr, wr, t, linear_bias=br, group=GROUP, label_smoothing=0.1, dtype=torch.float32)
    xf, wf, bf = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = crossent.linear_cross_entropy(xf, wf, t, linear_bias=bf, label_smoothing=0.1, dtype=torch.float32)
    assert loss.dtype == ref.dtype == torch.float32
    close(loss, ref, "bf16 loss", atol=1e-2, rtol=1e-2)
    loss.backward()
    ref.backward()
    assert xr.grad.dtype == wr.grad.dtype == torch.bfloat16
    for got, want, what in ((xr.grad, xf.grad, "x"), (wr.grad, wf.grad[sl], "W"), (br.grad, bf.grad[sl], "b")):
        close(got, want, f"bf16 grad_{what}", atol=2e-2, rtol=2e-2)


class _Largest(TorchDispatchMode):
    """The largest number of elements of any tensor an op creates."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@case(2, 4)
def linear_chunks_bound_memory(rank, world):
    """No tensor of N x V_r elements: the largest is one chunk's, or an input/gradient itself."""
    n, d, c, chunk = 256, 4, 64, 16
    _, x, w, b, cw, t = _problem(1500, n, d, c, soft=False, weighted=True, bias=True, dtype=torch.float32)
    sl = vocab_slice(c, world, rank)
    xr, wr, br = x.requires_grad_(), w[sl].clone().requires_grad_(), b[sl].clone().requires_grad_()
    mode = _Largest()
    with mode:
        loss = vp_lce(xr, wr, t, linear_bias=br, group=GROUP, weight=cw, label_smoothing=0.1,
                      z_loss=0.01, softcap=5.0, chunk_size=chunk)
        loss.backward()
    v_r = sl.stop - sl.start
    bound = max(chunk * v_r * 2, n * d, 4 * n)  # (the stacked per-token statistics are k x N)
    assert mode.numel <= bound < n * v_r, (mode.numel, bound, n * v_r)


@case(2, 4)
def linear_collective_counts_and_bits(rank, world):
    """Forward 2 all_reduce (+1 all_gather under SP), backward 1 (all_reduce, or reduce_scatter
    under SP, none with reduce_input_grad=False); two runs bitwise equal; ranks agree."""
    from torch.distributed.tensor.debug import CommDebugMode

    c = 10
    sl = vocab_slice(c, world, rank)
    expected = {(False, True): ({"all_reduce": 2}, {"all_reduce": 1}),
                (True, True): ({"all_gather_into_tensor": 1, "all_reduce": 2}, {"reduce_scatter_tensor": 1}),
                (False, False): ({"all_reduce": 2}, {})}
    for (sp, reduce), (want_fwd, want_bwd) in expected.items():
        runs = []
        for _ in range(2):
            _, x, w, b, cw, t = _problem(1600, 4 * world, 6, c, soft=False, weighted=True, bias=True,
                                         dtype=torch.float32)
            xr = (x[rank * 4:(rank + 1) * 4] if sp else x).clone().requires_grad_()
            wr = w[sl].clone().requires_grad_()
            fwd, bwd = CommDebugMode(), CommDebugMode()
            with fwd:
                loss = vp_lce(xr, wr, t, group=GROUP, weight=cw, label_smoothing=0.1, z_loss=0.01,
                              chunk_size=5, sequence_parallel=sp, reduce_input_grad=reduce)
            with bwd:
                loss.backward()
            for mode, want in ((fwd, want_fwd), (bwd, want_bwd)):
                counts = {str(k).split(".")[-1]: v for k, v in mode.get_comm_counts().items()}
                assert counts == want, (sp, reduce, counts, want)
            runs.append((loss.detach(), xr.grad, wr.grad))
        assert all(torch.equal(p, q) for p, q in zip(*runs)), "two runs differ"
        values = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(values, runs[0][0])
        assert all(torch.equal(v, values[0]) for v in values), "ranks disagree on the loss"


@case(2)
def linear_errors(rank, world):
    """A ZeRO-3 placeholder is refused with the remedy (a DTensor head is accepted:
    cases_linear_dtensor.py)."""
    from crossent._checks import InvalidArgument, InvalidArgumentType

    x, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    zero = torch.nn.Parameter(torch.empty(0))
    zero.ds_id, zero.ds_status, zero.ds_shape = 3, "NOT_AVAILABLE", (8, 4)
    for weight, pattern in ((zero, "ZeRO-3"),):
        try:
            vp_lce(x, weight, t, group=None)
        except InvalidArgumentType as err:
            assert pattern in str(err) and "VocabParallelLinearCrossEntropyLoss" in str(err), str(err)
        else:
            raise AssertionError(f"{pattern} weight accepted")
    for kwargs, pattern in ((dict(sequence_parallel=True, reduce_input_grad=False), "sequence_parallel"),
                            (dict(chunk_size=0), "chunk_size")):
        try:
            vp_lce(x, torch.randn(4, 4), t, group=None, num_classes=8, **kwargs)
        except InvalidArgument as err:
            assert pattern in str(err), str(err)
        else:
            raise AssertionError(f"{kwargs} accepted")


@case(2)
def single_rank_groups(rank, world):
    """A group of one rank: no collective; the linear loss is crossent.linear_cross_entropy's own
    bits, the logits loss equals crossent.cross_entropy."""
    from crossent.distributed import vocab_parallel_cross_entropy as vp_ce

    groups = [dist.new_group([r]) for r in range(world)]  # (every rank creates every group)
    mine = groups[rank]
    _, x, w, b, cw, t = _problem(1700, 9, 5, 10, soft=False, weighted=True, bias=True)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = vp_lce(xr, wr, t, linear_bias=b, group=mine, weight=cw, label_smoothing=0.1, z_loss=0.01)
    loss.backward()
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = crossent.linear_cross_entropy(xf, wf, t, linear_bias=b, weight=cw, label_smoothing=0.1, z_loss=0.01)
    ref.backward()
    assert torch.equal(loss, ref) and torch.equal(xr.grad, xf.grad) and torch.equal(wr.grad, wf.grad)
    z = (x @ w.T).detach().requires_grad_()
    zf = z.detach().clone().requires_grad_()
    got = vp_ce(z, t, cw, group=mine, label_smoothing=0.1, softcap=3.0)
    want = crossent.cross_entropy(zf, t, cw, label_smoothing=0.1, softcap=3.0)
    close(got, want, "1-rank logits loss")
    got.backward()
    want.backward()
    close(z.grad, zf.grad, "1-rank logits grad")


@case(2, 4)
def head_module_initialisation_is_the_full_layers(rank, world):
    """Building the head module (and .from_linear) moves every rank's global generator by the same
    amount -- uneven vocabularies included -- and its shard is nn.Linear's layer, sharded."""
    from crossent.distributed import VocabParallelLinearCrossEntropyLoss
    from crossent.distributed import nn as dnn

    for c, d, bias, block in [(1001, 8, True, 1 << 22), (7, 3, False, 1 << 22), (10, 4, True, 5),
                              (5, 2, True, 2)]:
        old = dnn.INIT_BLOCK_ELEMENTS
        dnn.INIT_BLOCK_ELEMENTS = block  # blocks of a row or two: the drawing order is the same
        try:
            torch.manual_seed(7)
            full = torch.nn.Linear(d, c, bias=bias, dtype=torch.float64)
            after_full = torch.rand(1)
            torch.manual_seed(7)
            head = VocabParallelLinearCrossEntropyLoss(d, c, bias=bias, dtype=torch.float64)
            after_head = torch.rand(1)
            torch.manual_seed(11)
            VocabParallelLinearCrossEntropyLoss.from_linear(full)
            after_from = torch.rand(1)
        finally:
            dnn.INIT_BLOCK_ELEMENTS = old
        sl = vocab_slice(c, world, rank)
        assert torch.equal(head.linear_weight.data, full.weight.data[sl]), (c, rank)
        if bias:
            assert torch.equal(head.linear_bias.data, full.bias.data[sl]), (c, rank)
        assert torch.equal(after_head, after_full), (c, rank)  # the same draws as nn.Linear
        for value in (after_head, after_from):  # and the same on every rank
            values = [torch.empty_like(value) for _ in range(world)]
            dist.all_gather(values, value)
            assert all(torch.equal(v, values[0]) for v in values), (c, values)
