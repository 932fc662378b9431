"""The distillation losses under autograd's tools: gradcheck and gradgradcheck on the fused
kernels and the composite formulas, torch.func (grad, vmap over a batch of problems),
torch.compile (fullgraph), autocast, requires_grad combinations, and bitwise determinism over
thread counts."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import dense_problem, leaves, topk_problem

import crossent
from conftest import assert_close, skip_if_products_depend_on_threads

X, W, B, XT, WT, BT, T = dense_problem(6, 3, 4, 9, dtype=torch.float64, seed=20)
T = torch.tensor([3, -100, 0, 8, -100, 5])  # (ignored rows among counted ones)
XK, WK, BK, IDS, LQ = topk_problem(5, 3, 12, k=3, seed=21)


def dense(beta, reduction="none", **kw):
    return lambda x, w, b: crossent.linear_distillation_loss(
        x, w, XT, WT, linear_bias=b, teacher_linear_bias=BT, target=T, beta=beta, reduction=reduction, **kw)


def topk(tail, reduction="none", **kw):
    return lambda x, w, b: crossent.linear_topk_distillation_loss(
        x, w, IDS, LQ, linear_bias=b, tail=tail, reduction=reduction, **kw)


@pytest.mark.parametrize("backend", ["fused", "composite"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_dense_gradcheck(backend, beta):
    with crossent.use_backend(backend):
        f = dense(beta, hard_weight=0.3, temperature=1.7, softcap=2.0, teacher_softcap=3.0, chunk_size=2)
        assert torch.autograd.gradcheck(f, leaves(X, W, B))
        assert torch.autograd.gradcheck(dense(beta, "mean", normalizer=3.0), leaves(X, W, B))


@pytest.mark.parametrize("backend", ["fused", "composite"])
@pytest.mark.parametrize("tail", [True, False])
def test_topk_gradcheck(backend, tail):
    with crossent.use_backend(backend):
        assert torch.autograd.gradcheck(topk(tail, softcap=3.0, temperature=1.3, chunk_size=2), leaves(XK, WK, BK))
        assert torch.autograd.gradcheck(topk(tail, "sum"), leaves(XK, WK, BK))


@pytest.mark.parametrize("backend", ["auto", "composite"])
def test_second_derivatives(backend):
    """The fused kernels' backward recomputes through the composite formulas when a graph of
    the gradient is asked for (create_graph=True): gradgradcheck holds on both."""
    ctx = crossent.use_backend(backend) if backend != "auto" else torch.enable_grad()
    with ctx:
        assert torch.autograd.gradgradcheck(dense(0.5, "mean", hard_weight=0.3, temperature=1.5), leaves(X, W, B))
        assert torch.autograd.gradgradcheck(dense(1.0, "sum", softcap=2.0), leaves(X, W, B))
        assert torch.autograd.gradgradcheck(topk(True, "mean", temperature=0.8), leaves(XK, WK, BK))
        assert torch.autograd.gradgradcheck(topk(False, "none"), leaves(XK, WK, BK))


def _eager_grads(f, *args):
    ls = leaves(*args)
    return torch.autograd.grad(f(*ls), ls)


def test_torch_func_grad_and_vmap():
    f = dense(0.5, "mean", hard_weight=0.5, temperature=2.0)
    g = torch.func.grad(f, argnums=(0, 1, 2))(X, W, B)
    for a, e in zip(g, _eager_grads(f, X, W, B)):
        assert_close(a, e)
    ft = topk(True, "mean")
    g = torch.func.grad(ft, argnums=(0, 1, 2))(XK, WK, BK)
    for a, e in zip(g, _eager_grads(ft, XK, WK, BK)):
        assert_close(a, e)
    # vmap over a batch of three students: each equals its own call
    xs = torch.stack([X, X * 0.5, X + 1.0])
    batched = torch.func.vmap(lambda x: f(x, W, B))(xs)
    for i in range(3):
        assert_close(batched[i], f(xs[i], W, B))
    xks = torch.stack([XK, -XK])
    batched = torch.func.vmap(lambda x: ft(x, WK, BK))(xks)
    for i in range(2):
        assert_close(batched[i], ft(xks[i], WK, BK))


@pytest.mark.parametrize("loss", ["dense", "topk"])
def test_torch_compile_fullgraph_equals_eager(loss):
    f = dense(0.3, "mean", hard_weight=0.5, softcap=3.0) if loss == "dense" else topk(True, "mean", temperature=1.5)
    args = (X, W, B) if loss == "dense" else (XK, WK, BK)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ls = leaves(*args)
    out = compiled(*ls)
    grads = torch.autograd.grad(out, ls)
    assert_close(out, f(*args))
    for a, e in zip(grads, _eager_grads(f, *args)):
        assert_close(a, e)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_products_in_the_autocast_dtype_and_the_loss_in_float32(dtype):
    """Under CPU autocast each head's product is F.linear's (autocast dtype), the loss float32,
    the gradients in the leaves' dtypes; equal to the composition under the same autocast."""
    import torch.nn.functional as F

    x, w, b, xt, wt, bt, t = dense_problem(10, 8, 12, 37, seed=22)
    xs, ws, bs = leaves(x, w, b)
    with torch.autocast("cpu", dtype=dtype):
        loss = crossent.linear_distillation_loss(xs, ws, xt, wt, linear_bias=bs, teacher_linear_bias=bt, target=t,
                                                 hard_weight=0.5, temperature=2.0)
        xc, wc, bc = leaves(x, w, b)
        z, u = F.linear(xc, wc, bc), F.linear(xt, wt, bt)
    assert loss.dtype == torch.float32 and z.dtype == dtype
    expected = crossent.reference.linear_distillation_loss(z, torch.eye(37, dtype=dtype), u.detach(),
                                                           torch.eye(37, dtype=dtype), target=t, hard_weight=0.5,
                                                           temperature=2.0)
    assert_close(loss, expected, dtype)
    grads = torch.autograd.grad(loss, (xs, ws, bs))
    expected_grads = torch.autograd.grad(expected, (xc, wc, bc))
    for g, e, leaf in zip(grads, expected_grads, (xs, ws, bs)):
        assert g.dtype == leaf.dtype
        assert_close(g, e, dtype)
    xk, wk, bk, ids, lq = topk_problem(k=4, seed=23)
    with torch.autocast("cpu", dtype=dtype):
        loss = crossent.linear_topk_distillation_loss(xk.float(), wk.float(), ids, lq.float(), linear_bias=bk.float())
        z = F.linear(xk.float(), wk.float(), bk.float())
    expected = crossent.reference.linear_topk_distillation_loss(z, torch.eye(100, dtype=dtype), ids, lq)
    assert loss.dtype == torch.float32
    assert_close(loss, expected, dtype)


def test_no_input_requires_grad_and_the_weight_alone():
    x, w, b, xt, wt, bt, t = dense_problem(seed=24)
    loss = crossent.linear_distillation_loss(x, w, xt, wt, target=t, hard_weight=0.5)
    assert not loss.requires_grad
    (ws,) = leaves(w)
    loss = crossent.linear_distillation_loss(x, ws, xt, wt, target=t, hard_weight=0.5, chunk_size=5)
    (g,) = torch.autograd.grad(loss, ws)
    ws2 = ws.detach().double().requires_grad_()
    ref = crossent.reference.linear_distillation_loss(x.double(), ws2, xt.double(), wt.double(), target=t,
                                                      hard_weight=0.5)
    assert_close(g, torch.autograd.grad(ref, ws2)[0], torch.float32)


@pytest.mark.parametrize("loss", ["dense", "topk"])
def test_fused_bitwise_the_same_at_one_and_two_threads(loss):
    """A chunk above the row reductions' grain (48 x 768 > 32768 elements): the loss and gradients
    do not depend on the number of threads (fixed reduction order), where the products do not."""
    skip_if_products_depend_on_threads(48, 768, 16)
    if loss == "dense":
        x, w, b, xt, wt, bt, t = dense_problem(64, 16, 24, 768, seed=25)
        f = lambda x_, w_, b_: crossent.linear_distillation_loss(
            x_, w_, xt, wt, linear_bias=b_, teacher_linear_bias=bt, target=t, hard_weight=0.4, chunk_size=48)
        args = (x, w, b)
    else:
        x, w, b, ids, lq = topk_problem(64, 16, 768, k=32, seed=26)
        f = lambda x_, w_, b_: crossent.linear_topk_distillation_loss(x_, w_, ids, lq.float(), linear_bias=b_,
                                                                       chunk_size=48)
        args = (x.float(), w.float(), b.float())
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with crossent.use_backend("fused"):
                ls = leaves(*args)
                out = f(*ls)
                runs.append((out.detach(), *torch.autograd.grad(out, ls)))
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)
