"""Shared by the distillation tests: problems, the torch compositions a user would write (TRL's
formulas on materialised logits), and the float64 reference."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_no_worse_than_torch

BACKENDS = ["auto", "fused", "composite", "reference"]
# Backends that run a third of each option grid (the offset of their third); the fused kernels and
# the float64 reference run all of it. 'auto' dispatches to the fused kernels at these sizes; the
# composite formulas share the row math the fused kernels are checked on. CROSSENT_FULL_GRID=1: all.
SLICED = {"auto": 0, "composite": 1}
FULL_GRID = os.environ.get("CROSSENT_FULL_GRID") == "1"


def backend_fixture(request):
    """The body of the test modules' ``backend`` fixture (params=BACKENDS): the backend a test runs
    on (None: crossent's own choice); on a sliced backend, a test with two or more other
    parameters runs the grid points whose index sum is its offset mod 3, which still runs every
    value of every option on it."""
    offset = SLICED.get(request.param)
    if offset is not None and not FULL_GRID:
        indices = {k: i for k, i in request.node.callspec.indices.items() if k != "backend"}
        if len(indices) >= 2 and sum(indices.values()) % 3 != offset:
            pytest.skip(f"a third of the option grid runs on {request.param} (CROSSENT_FULL_GRID=1: all)")
    if request.param == "auto":
        yield None
        return
    with crossent.use_backend(request.param):
        yield request.param


def dense_problem(n=12, d=8, d_t=12, v=37, *, dtype=torch.float32, ignored=0.25, seed=0, scale=2.0, bias=True):
    """(x, W, b, x_t, W_t, b_t, target): the student (D) and a wider teacher (D_t), a fraction of
    the targets ignored (-100)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    x, w, b = rnd(n, d), rnd(v, d) * (scale / d**0.5), rnd(v) if bias else None
    xt, wt, bt = rnd(n, d_t), rnd(v, d_t) * (scale / d_t**0.5), rnd(v) if bias else None
    target = torch.randint(0, v, (n,), generator=gen)
    if ignored:
        target[torch.rand(n, generator=gen) < ignored] = -100
        target[1] = -100
    cast = lambda t: t.to(dtype) if t is not None else None
    return cast(x), cast(w), cast(b), cast(xt), cast(wt), cast(bt), target


def topk_problem(n=10, d=8, v=100, k=4, *, dtype=torch.float64, concentrated=False, seed=0, ignored=True,
                 student_peaked=False):
    """(x, W, b, ids, log_q): the teacher's top-k of a random distribution -- ``concentrated``:
    its top-k holds all but ~1e-6 of the mass, else a diffuse one (the top-k holds little);
    ``student_peaked``: the student also puts almost all its mass on the teacher's ids. Some
    rows are padded with ignore_index, one row entirely."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * (1.0 / d**0.5)
    b = torch.randn(v, generator=gen, dtype=torch.float64)
    teacher = torch.randn(n, v, generator=gen, dtype=torch.float64) * (1.0 if not concentrated else 0.5)
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(n)])
    if concentrated:
        teacher.scatter_add_(1, ids, torch.full(ids.shape, 25.0, dtype=torch.float64))
    if student_peaked:
        b = b.scatter_add(0, ids.reshape(-1), torch.full((ids.numel(),), 12.0, dtype=torch.float64))
    log_q = teacher.log_softmax(1).gather(1, ids)
    if ignored and n > 3:
        ids[2] = -100
        if k > 1:
            ids[3, k // 2] = -100
    return x.to(dtype), w.to(dtype), b.to(dtype), ids, log_q.to(dtype)


def _kl(log_a, log_b):
    """F.kl_div(log_b, log_a, log_target=True): a (log a - log b), torch's elementwise KL."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True)


def torch_jsd(log_p, log_q, beta):
    """TRL's generalized JSD (GKD's generalized_jsd_loss, per row) with torch's ops."""
    if beta == 0:
        return _kl(log_q, log_p).sum(-1)
    if beta == 1:
        return _kl(log_p, log_q).sum(-1)
    b = torch.tensor(beta, dtype=log_p.dtype)
    log_m = torch.logsumexp(torch.stack([log_p + torch.log1p(-b), log_q + torch.log(b)]), 0)
    return (b * _kl(log_q, log_m) + (1 - b) * _kl(log_p, log_m)).sum(-1)


def _reduce(loss, counted, reduction, normalizer):
    loss = torch.where(counted, loss, 0.0)
    if reduction == "none":
        return loss
    if normalizer is not None:
        return loss.sum() / normalizer
    return loss.sum() / counted.sum() if reduction == "mean" else loss.sum()


def _cap(z, cap):
    return cap * torch.tanh(z / cap) if cap is not None else z


def torch_dense(x, w, b, xt, wt, bt, target=None, *, beta=0.5, temperature=1.0, softcap=None, teacher_softcap=None,
                hard_weight=0.0, soft_weight=1.0, ignore_index=-100, reduction="mean", normalizer=None, **_):
    """The dense loss as a torch user writes it: both logits, log_softmax, TRL's divergence."""
    z = _cap(F.linear(x, w, b), softcap)
    with torch.no_grad():
        u = _cap(F.linear(xt, wt, bt), teacher_softcap)
    loss = soft_weight * torch_jsd(F.log_softmax(z / temperature, -1), F.log_softmax(u / temperature, -1), beta)
    if hard_weight:
        loss = loss + hard_weight * F.cross_entropy(z, target, reduction="none", ignore_index=ignore_index)
    counted = torch.ones(x.shape[0], dtype=torch.bool) if target is None else target != ignore_index
    return _reduce(loss, counted, reduction, normalizer)


def torch_topk(x, w, b, ids, log_q, *, temperature=1.0, softcap=None, tail=True, ignore_index=-100,
               reduction="mean", normalizer=None, **_):
    """The top-k loss as TRL's ServerDistillationTrainer computes it (beta = 0, its tail bucket
    log(-expm1(logsumexp(.))) clamped at -1e-7), with the ignored ids as its -inf padding."""
    lp = F.log_softmax(_cap(F.linear(x, w, b), softcap) / temperature, -1)
    valid = ids != ignore_index
    neg = torch.tensor(float("-inf"), dtype=lp.dtype)
    lp_s = torch.where(valid, lp.gather(1, torch.where(valid, ids, 0)), neg)
    lq = torch.where(valid, log_q.to(lp.dtype), neg)
    if tail:
        def bucket(a):
            return torch.cat([a, torch.log(-torch.expm1(torch.clamp(torch.logsumexp(a, -1, keepdim=True), max=-1e-7)))], -1)
        lp_s, lq = bucket(lp_s), bucket(lq)
    else:
        lp_s = lp_s - torch.logsumexp(lp_s, -1, keepdim=True)
        lq = lq - torch.logsumexp(lq, -1, keepdim=True)
    q = lq.exp()
    loss = torch.nan_to_num(torch.where(q > 0, q * (lq - lp_s), 0.0), nan=0.0).sum(-1)
    return _reduce(loss, valid.any(1), reduction, normalizer)


def leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def grad_out(loss):
    if loss.dim() == 0:
        return torch.tensor(0.7, dtype=loss.dtype)
    gen = torch.Generator().manual_seed(1)
    return (torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.25).to(loss.dtype)


def check_dense(problem, dtype, **kw):
    """crossent vs the torch composition in ``dtype`` vs the float64 reference: value and the
    gradients w.r.t. the student's input, weight and bias, no worse than torch's."""
    x, w, b, xt, wt, bt, t = problem
    cast = lambda a: a.to(dtype) if a is not None else None
    xs, ws, bs = leaves(cast(x), cast(w), cast(b))
    ours = crossent.linear_distillation_loss(xs, ws, cast(xt), cast(wt), linear_bias=bs, teacher_linear_bias=cast(bt),
                                             target=t, **kw)
    xc, wc, bc = leaves(cast(x), cast(w), cast(b))
    theirs = torch_dense(xc, wc, bc, cast(xt), cast(wt), cast(bt), t, **kw)
    xr, wr, br = leaves(x.double(), w.double(), b.double() if b is not None else None)
    ref = crossent.reference.linear_distillation_loss(
        xr, wr, xt.double(), wt.double(), br, bt.double() if bt is not None else None, t,
        **{k: v for k, v in kw.items() if k != "chunk_size"})
    _compare(ours, theirs, ref, (xs, ws, bs), (xc, wc, bc), (xr, wr, br), dtype)
    return ours, ref


def check_topk(problem, dtype, **kw):
    x, w, b, ids, log_q = problem
    xs, ws, bs = leaves(x.to(dtype), w.to(dtype), b.to(dtype))
    ours = crossent.linear_topk_distillation_loss(xs, ws, ids, log_q.to(dtype), linear_bias=bs, **kw)
    xc, wc, bc = leaves(x.to(dtype), w.to(dtype), b.to(dtype))
    theirs = torch_topk(xc, wc, bc, ids, log_q.to(dtype), **kw)
    xr, wr, br = leaves(x.double(), w.double(), b.double())
    ref = crossent.reference.linear_topk_distillation_loss(
        xr, wr, ids, log_q.double(), br, **{k: v for k, v in kw.items() if k != "chunk_size"})
    _compare(ours, theirs, ref, (xs, ws, bs), (xc, wc, bc), (xr, wr, br), dtype)
    return ours, ref


def _compare(ours, theirs, ref, ours_in, theirs_in, ref_in, dtype):
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    if not ref.requires_grad or math.isnan(float(ref.detach().sum())):
        return
    go = grad_out(ref)
    pick = lambda ts: [t for t in ts if t is not None]
    g_ours = torch.autograd.grad(ours, pick(ours_in), go.to(dtype))
    g_theirs = torch.autograd.grad(theirs, pick(theirs_in), go.to(dtype), allow_unused=True)
    g_ref = torch.autograd.grad(ref, pick(ref_in), go)
    for g, gt, gr in zip(g_ours, g_theirs, g_ref):
        assert g.dtype == dtype
        assert_no_worse_than_torch(g, gt if gt is not None else torch.zeros_like(g), gr, dtype)
