"""Autograd of log_probs and linear_log_probs: gradcheck and gradgradcheck on the fused and
composite paths, one output differentiated or none, repeated backward, ignored rows, 16-bit
inputs and autocast, determinism, torch.func and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_log_probs import composition

import crossent
from conftest import assert_close, assert_no_worse_than_torch, skip_if_products_depend_on_threads


def _linear_problem(n=5, v=11, d=4, dtype=torch.float64, seed=0, ignored=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.8).to(dtype).requires_grad_()
    b = torch.randn(v, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    if ignored:
        t[1] = -100
    return x, w, b, t


KW = dict(temperature=0.8, softcap=3.0, return_entropy=True)


@pytest.mark.parametrize("backend", ["fused", "composite"])
def test_gradcheck_linear(backend):
    """(Triton's: tests/backends/triton/test_triton_log_probs.py, at the interpreter's size.)"""
    x, w, b, t = _linear_problem()
    with crossent.use_backend(backend):
        fn = lambda x, w, b: crossent.linear_log_probs(x, w, t, linear_bias=b, chunk_size=2, **KW)
        assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", ["fused", "composite"])
def test_gradgradcheck_linear(backend):
    """Second derivatives: the fused path recomputes through the composite formulas."""
    x, w, b, t = _linear_problem(n=3, v=6, d=3)
    with crossent.use_backend(backend):
        fn = lambda x, w, b: crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", ["fused", "composite"])
def test_gradcheck_logits(backend):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.randint(0, 7, (2, 3), generator=gen)
    t[0, 1] = -100
    with crossent.use_backend(backend):
        assert torch.autograd.gradcheck(lambda z: crossent.log_probs(z[:, 1:], t[:, 1:], **KW), (z,))
        assert torch.autograd.gradgradcheck(lambda z: crossent.log_probs(z, t, **KW), (z,))


@pytest.mark.parametrize("which", ["log_probs", "entropy", "both"])
def test_one_output_differentiated(which):
    """A gradient that flows through one output only equals the combined gradient with the
    other's weight 0 (the unused output costs nothing: its backward term is skipped)."""
    x, w, b, t = _linear_problem(n=9, v=13, d=5, dtype=torch.float32)
    a = torch.randn(9) if which != "entropy" else torch.zeros(9)
    c = torch.randn(9) if which != "log_probs" else torch.zeros(9)
    with crossent.use_backend("fused"):
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        picked = {"log_probs": (lp * a).sum(), "entropy": (h * c).sum(), "both": (lp * a + h * c).sum()}[which]
        ours = torch.autograd.grad(picked, (x, w, b))
    lp2, h2 = composition(F.linear(x, w, b), t, temperature=0.8, softcap=3.0)
    theirs = torch.autograd.grad((lp2 * a + h2 * c).sum(), (x, w, b))
    for g, g2 in zip(ours, theirs):
        assert_close(g, g2)


def test_no_gradient_and_retain_graph():
    x, w, b, t = _linear_problem(n=7, v=17, d=4, dtype=torch.float32)
    with crossent.use_backend("fused"):
        with torch.no_grad():
            lp0, h0 = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        assert torch.equal(lp0, lp.detach()) and torch.equal(h0, h.detach())
        total = (lp * 2 - h).sum()
        first = torch.autograd.grad(total, (x, w, b), retain_graph=True)
        second = torch.autograd.grad(total, (x, w, b))
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


def test_ignored_rows_are_zero_and_give_no_gradient():
    x, w, b, t = _linear_problem(n=6, v=9, d=4, dtype=torch.float32)
    t[:] = torch.tensor([3, -100, 2, -100, -100, 1])
    with crossent.use_backend("fused"):
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        gx, = torch.autograd.grad((lp + h).sum(), x)
    ignored = t == -100
    assert torch.equal(lp[ignored], torch.zeros(3)) and torch.equal(h[ignored], torch.zeros(3))
    assert torch.equal(gx[ignored], torch.zeros(3, 4)) and gx[~ignored].abs().sum() > 0
    t[:] = -100  # all ignored: zeros, and zero gradients (not nan)
    with crossent.use_backend("fused"):
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        grads = torch.autograd.grad((lp + h).sum(), (x, w, b))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_inputs_no_worse_than_torch(dtype):
    """Products in the input dtype, softmax math in float32: against torch's 16-bit F.linear and
    float32 log_softmax (TRL's composition), both measured against float64."""
    x, w, b, t = _linear_problem(n=12, v=300, d=16, dtype=torch.float64)
    a, c = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)

    def run(fn, dt):
        ps = [p.detach().to(dt).requires_grad_() for p in (x, w, b)]
        lp, h = fn(*ps)
        grads = torch.autograd.grad((lp * a.to(lp.dtype) + h * c.to(h.dtype)).sum(), ps)
        return [lp.detach(), h.detach(), *grads]

    with crossent.use_backend("fused"):
        ours = run(lambda x, w, b: crossent.linear_log_probs(x, w, t, linear_bias=b, chunk_size=5, **KW), dtype)
    assert ours[0].dtype == torch.float32 and ours[2].dtype == dtype
    comp = lambda x, w, b: composition(F.linear(x, w, b).float() if x.dtype != torch.float64 else F.linear(x, w, b),
                                       t, temperature=0.8, softcap=3.0)
    theirs, truth = run(comp, dtype), run(comp, torch.float64)
    for o, th, r in zip(ours, theirs, truth):
        assert_no_worse_than_torch(o, th, r, dtype)


def test_autocast_runs_the_product_in_the_autocast_dtype():
    x, w, b, t = _linear_problem(n=8, v=40, d=8, dtype=torch.float32)
    with crossent.use_backend("fused"), torch.autocast("cpu", dtype=torch.bfloat16):
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
    with crossent.use_backend("fused"):
        lp2, h2 = crossent.linear_log_probs(x.bfloat16(), w.bfloat16(), t, linear_bias=b.bfloat16(), **KW)
    assert lp.dtype == torch.float32 and torch.equal(lp, lp2) and torch.equal(h, h2)
    gx, = torch.autograd.grad(lp.sum(), x)
    assert gx.dtype == torch.float32


def test_deterministic_across_runs_and_threads():
    """64 x 768 logits, one chunk above the row reductions' grain: bitwise the same run to run and
    at one and two threads (where the products are)."""
    skip_if_products_depend_on_threads(64, 768, 16)
    x, w, b, t = _linear_problem(n=64, v=768, d=16, dtype=torch.float32)
    threads = torch.get_num_threads()

    def run():
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b, **KW)
        return [lp, h, *torch.autograd.grad((lp - 0.3 * h).sum(), (x, w, b))]

    try:
        with crossent.use_backend("fused"):
            first = run()
            again = run()
            torch.set_num_threads(1)
            serial = run()
    finally:
        torch.set_num_threads(threads)
    for a, b_, c in zip(first, again, serial):
        assert torch.equal(a, b_) and torch.equal(a, c)


def test_torch_func_and_compile_trace_the_composite_formulas():
    x, w, b, t = _linear_problem(n=4, v=9, d=3, dtype=torch.float32)

    def loss(x, w):
        lp, h = crossent.linear_log_probs(x, w, t, linear_bias=b.detach(), **KW)
        return (lp + 0.1 * h).sum()

    gx, gw = torch.func.grad(loss, argnums=(0, 1))(x.detach(), w.detach())
    want = torch.autograd.grad(loss(x, w), (x, w))
    assert_close(gx, want[0])
    assert_close(gw, want[1])
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, w), loss(x, w))
    z = torch.randn(3, 5, 8)
    tz = torch.randint(0, 8, (3, 5))
    per_row = torch.func.vmap(lambda row, tr: crossent.log_probs(row, tr, temperature=0.5))(z, tz)
    assert_close(per_row, crossent.log_probs(z, tz, temperature=0.5))
