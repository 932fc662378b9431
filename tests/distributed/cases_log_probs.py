"""vocab_parallel_linear_log_probs on weight shards: both outputs and the gradients of a combined
loss (random weights on the log-probs and the entropies) against single-process
crossent.linear_log_probs and a float64 torch composition, over temperature x softcap x bias x
entropy x leading dims, on uneven and empty shards; one output differentiated, no gradient,
-inf logits and whole -inf shards, float32 and bfloat16, collective counts, determinism, memory,
errors."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from cases import F64, case, close, gen, grid, raises, vocab_slice
from cases_linear import _Largest

import crossent
from crossent.distributed import vocab_parallel_linear_log_probs as vp_llp


def _problem(seed, lead, d, c, *, bias, dtype=torch.float64, masked=()):
    g = gen(seed)
    x = torch.randn(*lead, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(dtype) if bias else None
    if masked:
        b[list(masked)] = float("-inf")  # masked tokens (never a target below)
    t = torch.randint(0, c, lead, generator=g)
    for k in masked:
        t[t == k] = (k + 1) % c if (k + 1) % c not in masked else 0
    t.view(-1)[::4] = -100  # some ignored tokens
    a = torch.randn(lead, generator=g, dtype=torch.float64)
    cc = torch.randn(lead, generator=g, dtype=torch.float64)
    return x, w, b, t, a, cc


def _torch64(x, w, b, t, temperature, softcap):
    """The float64 oracle: torch's ops, TRL's composition (log_softmax, gather, entropy)."""
    z = F.linear(x, w, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    log_p = F.log_softmax(z / temperature, -1)
    valid = t != -100
    lp = log_p.gather(-1, torch.where(valid, t, 0).unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    h = -(p * torch.where(p > 0, log_p, 0.0)).sum(-1)
    return torch.where(valid, lp, 0.0), torch.where(valid, h, 0.0)


def _leaves(sl, x, w, b):
    return (x.clone().requires_grad_(), w[sl].clone().requires_grad_(),
            b[sl].clone().requires_grad_() if b is not None else None)


def _grads(outs, a, cc, leaves, entropy):
    lp, h = outs if entropy else (outs, None)
    total = (lp * a.to(lp.dtype)).sum() + ((h * cc.to(h.dtype)).sum() if entropy else 0.0)
    return torch.autograd.grad(total, [t for t in leaves if t is not None])


def _compare(rank, world, seed, lead, d, c, *, temperature=1.0, softcap=None, bias=True, entropy=True,
             chunk=3, dtype=torch.float64, tol=None, masked=(), torch_oracle=True, **kw):
    x, w, b, t, a, cc = _problem(seed, lead, d, c, bias=bias, dtype=dtype, masked=masked)
    sl = kw.pop("sl", None) or vocab_slice(c, world, rank)
    opts = dict(temperature=temperature, softcap=softcap, return_entropy=entropy)
    what = f"V={c} lead={lead} shard={sl} bias={bias} {opts} {kw}"
    xr, wr, br = _leaves(sl, x, w, b)
    got = vp_llp(xr, wr, t, linear_bias=br, chunk_size=chunk, **opts, **kw)
    ref_leaves = _leaves(slice(None), x, w, b)
    ref = crossent.linear_log_probs(ref_leaves[0], ref_leaves[1], t, linear_bias=ref_leaves[2], **opts)
    tol = tol or F64
    for o, r, name in zip(got if entropy else (got,), ref if entropy else (ref,), ("log_probs", "entropy")):
        assert o.dtype == r.dtype and o.shape == r.shape, (o.dtype, r.dtype, o.shape, r.shape)
        close(o, r, f"{name} {what}", **tol)
    mine = _grads(got, a, cc, (xr, wr, br), entropy)
    theirs = _grads(ref, a, cc, ref_leaves, entropy)
    want = [theirs[0], theirs[1][sl]] + ([theirs[2][sl]] if b is not None else [])
    for gm, gt, name in zip(mine, want, "xWb"):
        close(gm, gt, f"grad_{name} {what}", **tol)
    if torch_oracle and dtype == torch.float64:
        oracle = _torch64(x, w, b, t, temperature, softcap)
        close(got[0] if entropy else got, oracle[0], f"log_probs vs torch {what}")
        if entropy:
            close(got[1], oracle[1], f"entropy vs torch {what}")


def _grid(rank, world, c, seed):
    axes = grid(temperature=[1.0, 0.7], softcap=[None, 2.5], entropy=[True, False], lead=[(7,), (2, 3)])
    for i, a in enumerate(axes):
        _compare(rank, world, seed + i, a["lead"], 5, c, temperature=a["temperature"], softcap=a["softcap"],
                 entropy=a["entropy"], bias=i % 2 == 0)


@case(2, 4)
def log_probs_grid_V10(rank, world):  # W=4: 3, 3, 3, 1 classes; 7 tokens in chunks of 3
    _grid(rank, world, 10, 3000)


@case(4)
def log_probs_grid_V5(rank, world):  # an empty shard: 2, 2, 1, 0
    _grid(rank, world, 5, 3100)


@case(2, 4)
def log_probs_uneven_shards_and_masks(rank, world):
    """Explicit uneven vocab_range (and a rank with none), num_classes given; -inf logits (a
    masked bias), and a whole shard of -inf logits (its row max -inf); one chunk for all."""
    c = 11
    sizes = [7, 4] if world == 2 else [5, 0, 4, 2]
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    for i, a in enumerate(grid(num=[None, c], chunk=[2, None])):
        # without num_classes: the layout from the shard sizes (one all_gather), in rank order
        kw = dict(vocab_range=(sl.start, sl.stop), num_classes=a["num"]) if a["num"] else {}
        _compare(rank, world, 3200 + i, (6,), 4, c, temperature=0.8, softcap=3.0, chunk=a["chunk"],
                 sl=sl, **kw)
    masked = tuple(range(c - sizes[-1], c)) + (0, 2)  # the last shard wholly masked, and two more
    _compare(rank, world, 3250, (2, 4), 4, c, temperature=1.3, softcap=None, sl=sl, masked=masked,
             vocab_range=(sl.start, sl.stop), num_classes=c)


@case(2, 4)
def log_probs_one_output_no_grad_float32_bfloat16(rank, world):
    """The gradient through one output only; no gradient (reference model) equals the outputs;
    float32 with the default chunking; bfloat16 products against crossent's own bf16 call."""
    c = 10
    sl = vocab_slice(c, world, rank)
    x, w, b, t, a, cc = _problem(3300, (9,), 6, c, bias=True)
    for which in ("lp", "h"):
        xr, wr, br = _leaves(sl, x, w, b)
        lp, h = vp_llp(xr, wr, t, linear_bias=br, return_entropy=True, softcap=2.0, chunk_size=4)
        ref_leaves = _leaves(slice(None), x, w, b)
        rlp, rh = crossent.linear_log_probs(ref_leaves[0], ref_leaves[1], t, linear_bias=ref_leaves[2],
                                            return_entropy=True, softcap=2.0)
        mine = torch.autograd.grad((lp * a).sum() if which == "lp" else (h * cc).sum(), (xr, wr, br))
        theirs = torch.autograd.grad((rlp * a).sum() if which == "lp" else (rh * cc).sum(), ref_leaves)
        for gm, gt in zip(mine, (theirs[0], theirs[1][sl], theirs[2][sl])):
            close(gm, gt, f"grad via {which}")
    with torch.no_grad():
        lp0, h0 = vp_llp(x, w[sl], t, linear_bias=b[sl], return_entropy=True, chunk_size=4)
    lp1, h1 = vp_llp(x, w[sl].requires_grad_(), t, linear_bias=b[sl], return_entropy=True, chunk_size=4)
    assert torch.equal(lp0, lp1.detach()) and torch.equal(h0, h1.detach())
    _compare(rank, world, 3350, (4, 5), 8, c, temperature=0.9, softcap=4.0, chunk=None, dtype=torch.float32,
             tol=dict(atol=1e-5, rtol=1e-5))
    x, w, b, t, a, cc = _problem(3400, (8,), 16, c, bias=True, dtype=torch.bfloat16)
    xr, wr, br = _leaves(sl, x, w, b)
    lp, h = vp_llp(xr, wr, t, linear_bias=br, return_entropy=True)
    ref_leaves = _leaves(slice(None), x, w, b)
    rlp, rh = crossent.linear_log_probs(ref_leaves[0], ref_leaves[1], t, linear_bias=ref_leaves[2],
                                        return_entropy=True)
    assert lp.dtype == rlp.dtype == torch.float32
    close(lp, rlp, "bf16 log_probs", atol=1e-2, rtol=1e-2)
    close(h, rh, "bf16 entropy", atol=1e-2, rtol=1e-2)
    mine = _grads((lp, h), a, cc, (xr, wr, br), True)
    theirs = _grads((rlp, rh), a, cc, ref_leaves, True)
    assert mine[0].dtype == mine[1].dtype == torch.bfloat16
    for gm, gt in zip(mine, (theirs[0], theirs[1][sl], theirs[2][sl])):
        close(gm, gt, "bf16 gradient", atol=3e-2, rtol=3e-2)


@case(2, 4)
def log_probs_collectives_bits_memory(rank, world):
    """Forward 2 all_reduce (num_classes given), backward 1 (none without an input gradient);
    two runs bitwise equal; ranks agree (deterministic too); no tensor of N x V_r elements."""
    from torch.distributed.tensor.debug import CommDebugMode

    c = 12
    sl = vocab_slice(c, world, rank)
    for det in (False, True):
        runs = []
        for _ in range(2):
            x, w, b, t, a, cc = _problem(3500, (4 * world,), 6, c, bias=True, dtype=torch.float32)
            xr, wr, br = _leaves(sl, x, w, b)
            fwd, bwd = CommDebugMode(), CommDebugMode()
            with fwd:
                lp, h = vp_llp(xr, wr, t, linear_bias=br, return_entropy=True, num_classes=c, chunk_size=5,
                               deterministic=det)
            with bwd:
                grads = _grads((lp, h), a, cc, (xr, wr, br), True)
            counts = [{str(k).split(".")[-1]: v for k, v in m.get_comm_counts().items()} for m in (fwd, bwd)]
            # (deterministic: the SUMs become all_gathers; the MAX is exact, an all_reduce anyway)
            want = ([{"all_reduce": 1, "all_gather_into_tensor": 1}, {"all_gather_into_tensor": 1}] if det
                    else [{"all_reduce": 2}, {"all_reduce": 1}])
            assert counts == want, (det, counts, want)
            runs.append((lp.detach(), h.detach(), *grads))
        assert all(torch.equal(p, q) for p, q in zip(*runs)), "two runs differ"
        for v in runs[0][:3]:
            gathered = [torch.zeros_like(v) for _ in range(world)]
            dist.all_gather(gathered, v)
            assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks disagree"
    xr, wr = _leaves(sl, x, w, None)[:2]
    xr.requires_grad_(False)
    bwd = CommDebugMode()
    lp = vp_llp(xr, wr, t, num_classes=c)
    with bwd:
        lp.sum().backward()
    assert not bwd.get_comm_counts(), bwd.get_comm_counts()
    n, d, chunk = 256, 4, 16
    x, w, b, t, a, cc = _problem(3600, (n,), d, 64, bias=True, dtype=torch.float32)
    sl = vocab_slice(64, world, rank)
    xr, wr, br = _leaves(sl, x, w, b)
    mode = _Largest()
    with mode:
        lp, h = vp_llp(xr, wr, t, linear_bias=br, return_entropy=True, softcap=5.0, temperature=0.9,
                       chunk_size=chunk, num_classes=64)
        _grads((lp, h), a, cc, (xr, wr, br), True)
    v_r = sl.stop - sl.start
    bound = max(chunk * v_r, n * d, 3 * n)  # (the stacked per-token statistics are 3 x N)
    assert mode.numel <= bound < n * v_r, (mode.numel, bound, n * v_r)


@case(2, 4)
def log_probs_default_chunk_is_the_single_process_rule(rank, world):
    """Without chunk_size the tokens per chunk come from the single-process rule
    (chunked.log_prob_rows: at least 256 tokens within 256 MiB), not the linear loss's 16 MiB
    budget alone: a small head (D=4, 9000 classes per rank) gets 256-token chunks, not 128 or 176."""
    from crossent._options import LossOptions
    from crossent.backends import chunked
    from crossent.distributed import log_probs as module

    n, d, v_r = 512, 4, 9000
    x, w, b, t, a, cc = _problem(3800, (n,), d, v_r * world, bias=False, dtype=torch.float32)
    sl = vocab_slice(v_r * world, world, rank)
    seen, real = [], module.run_linear_log_probs
    module.run_linear_log_probs = lambda call, *args: seen.append(call.rows) or real(call, *args)
    try:
        for entropy in (True, False):
            xr, wr, _ = _leaves(sl, x, w, None)
            out = vp_llp(xr, wr, t, return_entropy=entropy, temperature=0.9)
            ref = crossent.linear_log_probs(x, w, t, return_entropy=entropy, temperature=0.9)
            for o, r in zip(out if entropy else (out,), ref if entropy else (ref,)):
                close(o, r, f"default chunk, entropy={entropy}", atol=1e-5, rtol=1e-5)
            extra = 2 if entropy else 1
            rule = chunked.log_prob_rows(n, d, v_r, torch.float32, LossOptions(), extra_buffers=extra)
            budget_only = chunked.chunk_rows(n, d, v_r, torch.float32, LossOptions(), extra_buffers=extra)
            assert seen[-1] == rule == 256 > budget_only, (seen, rule, budget_only)
    finally:
        module.run_linear_log_probs = real


@case(2)
def log_probs_errors(rank, world):
    """A target outside the global classes, a bad vocab_range and a second derivative are refused
    with the remedy (a DTensor weight is accepted: cases_log_probs_dtensor.py); a world of one rank
    is the single-device call."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from crossent._checks import InvalidArgument

    mesh = init_device_mesh("cpu", (world,))
    x, t, w = torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(4, 4)
    g = gen(3700)  # (the same full tensors on every rank)
    wf, xf = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    close(vp_llp(xf, distribute_tensor(wf, mesh, [Shard(0)]), t), crossent.linear_log_probs(xf, wf, t),
          "a DTensor weight")
    raises(lambda: vp_llp(x, w, torch.tensor([0, 8, 1])), ValueError,
            "target contains 8 at index (1,), outside the classes [0, 8)")
    raises(lambda: vp_llp(x, w, t, vocab_range=(0, 3), num_classes=8), InvalidArgument, "vocab_range must")
    raises(lambda: vp_llp(x, w, t, temperature=0), ValueError, "temperature must be > 0, got 0.0")
    xr = x.clone().requires_grad_()
    lp = vp_llp(xr, w, t, num_classes=8)
    raises(lambda: torch.autograd.grad(lp.sum(), xr, create_graph=True), InvalidArgument, "second derivatives")
    groups = [dist.new_group([r]) for r in range(world)]  # (every rank creates every group)
    solo = groups[rank]
    wf = torch.randn(6, 4, dtype=torch.float64)
    xs = torch.randn(2, 3, 4, dtype=torch.float64)
    ts = torch.randint(0, 6, (2, 3))
    lp, h = vp_llp(xs, wf, ts, group=solo, return_entropy=True, softcap=2.0)
    rlp, rh = crossent.linear_log_probs(xs, wf, ts, return_entropy=True, softcap=2.0)
    assert torch.equal(lp, rlp) and torch.equal(h, rh)
