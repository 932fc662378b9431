"""The whole autograd contract, on every path: gradcheck and gradgradcheck, second-order uses
(MAML, Hessian-vector products, gradient penalties), repeated backward, torch.func, autocast.
(torch.compile: tests/test_compile.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import crossent
from crossent import Backend
from crossent.backends.chunked import TORCH_MAX_NUMEL

PATHS = [Backend.FUSED, Backend.TORCH, Backend.COMPOSITE, Backend.REFERENCE]

CE_OPTIONS = {
    "plain": {},
    "ignore": {"ignore_index": 2},
    "smoothing+weight": {"label_smoothing": 0.2, "weight": True},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "z_loss+softcap": {"z_loss": 0.05, "softcap": 2.5},
    "probs": {"probs": True, "label_smoothing": 0.1},
    "probs+weight+none": {"probs": True, "weight": True, "reduction": "none"},
}


def _ce_problem(opts, n=5, c=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opts = dict(opts)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    if opts.pop("probs", False):
        t = torch.rand(n, c, generator=gen, dtype=torch.float64).softmax(1)
    else:
        t = torch.randint(0, c, (n,), generator=gen)
        t[0] = 2  # (a target equal to the ignored class, where there is one)
    if opts.pop("weight", False):
        opts["weight"] = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    return x, t, opts


@pytest.mark.parametrize("path", PATHS, ids=[p.value for p in PATHS])
@pytest.mark.parametrize("name", CE_OPTIONS)
def test_cross_entropy_gradcheck_and_gradgradcheck(path, name):
    x, t, opts = _ce_problem(CE_OPTIONS[name])
    with crossent.use_backend(path):
        f = lambda x: crossent.cross_entropy(x, t, **opts)
        assert gradcheck(f, (x,))
        assert gradgradcheck(f, (x,))


# The losses' inputs are gradcheck's own: a fused loss recomputes from its inputs for second
# derivatives and repeated backward, holding them weakly (test_second_derivative_without_...).
@pytest.mark.parametrize("path", PATHS, ids=[p.value for p in PATHS])
@pytest.mark.parametrize("probs", [False, True], ids=["indices", "probs"])
def test_k_dimensional_gradcheck_and_gradgradcheck(path, probs):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, 4, 2, generator=gen, dtype=torch.float64).softmax(1) if probs else torch.randint(0, 4, (3, 2), generator=gen)
    w = torch.randn(4, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tl = torch.rand(3, 4, 2, generator=gen, dtype=torch.float64).softmax(1) if probs else t
    with crossent.use_backend(path):
        f = lambda x: crossent.cross_entropy(x, t, label_smoothing=0.1)
        assert gradcheck(f, (x,)) and gradgradcheck(f, (x,))
        g = lambda h, w: crossent.linear_cross_entropy(h, w, tl, reduction="sum")
        assert gradcheck(g, (h, w)) and gradgradcheck(g, (h, w))


BINARY = {
    "bce": lambda x, y, w: crossent.binary_cross_entropy(x, y, w),
    "bce_with_logits": lambda x, y, w: crossent.binary_cross_entropy_with_logits(x, y, w, pos_weight=w[0] + 1),
    "nll": lambda x, y, w: crossent.nll_loss(x.log_softmax(1), y.argmax(1), w[0]),
    "nll none": lambda x, y, w: crossent.nll_loss(x.log_softmax(1), y.argmax(1), reduction="none"),
}


@pytest.mark.parametrize("path", PATHS, ids=[p.value for p in PATHS])
@pytest.mark.parametrize("name", BINARY)
def test_binary_and_nll_gradcheck_and_gradgradcheck(path, name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    x = (x.sigmoid() if name == "bce" else x).requires_grad_()
    y = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.5
    with crossent.use_backend(path):
        f = lambda x: BINARY[name](x, y, w)
        assert gradcheck(f, (x,))
        assert gradgradcheck(f, (x,))


@pytest.mark.parametrize("path", PATHS, ids=[p.value for p in PATHS])
@pytest.mark.parametrize("opts", [{}, {"reduction": "none", "label_smoothing": 0.1}, {"reduction": "sum", "z_loss": 0.01}],
                         ids=["mean", "none", "sum+z_loss"])
def test_linear_cross_entropy_gradcheck_and_gradgradcheck(path, opts):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, (5,), generator=gen)
    if path is Backend.TORCH and opts.get("z_loss"):
        pytest.skip("z_loss is crossent's: torch's kernels are never chosen for it")
    with crossent.use_backend(path):
        f = lambda x, w, b: crossent.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=2, **opts)
        assert gradcheck(f, (x, w, b))
        assert gradgradcheck(f, (x, w, b))


# ---------------------------------------------------------------- second order at fused sizes


C = 500
N = TORCH_MAX_NUMEL // C + 16  # logits just above TORCH_MAX_NUMEL, so the rule picks the fused kernels


def _fused_size_problem(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 16, generator=gen, dtype=dtype)
    w = (torch.randn(C, 16, generator=gen, dtype=dtype) * 0.3).requires_grad_()
    t = torch.randint(0, C, (N,), generator=gen)
    t[::7] = -100
    return x, w, t


@pytest.mark.parametrize("loss", ["ce", "linear"])
def test_maml_second_order_outer_gradient_equals_torchs(loss):
    """One inner SGD step on w, the outer loss at the adapted weights, its gradient w.r.t. w."""
    x, w, t = _fused_size_problem(dtype=torch.float64)

    def run(ce):
        held = []  # the logits, held by the caller as most training loops do

        def inner(w):
            if loss == "linear" and ce is crossent.cross_entropy:
                return crossent.linear_cross_entropy(x, w, t, label_smoothing=0.1)
            held.append(x @ w.T)
            return ce(held[-1], t, label_smoothing=0.1)

        (g,) = torch.autograd.grad(inner(w), w, create_graph=True)
        w2 = w - 0.5 * g
        return torch.autograd.grad(inner(w2), w)[0]

    ours, theirs = run(crossent.cross_entropy), run(F.cross_entropy)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_hessian_vector_product_and_gradient_penalty_equal_torchs():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(N, C, generator=gen, dtype=torch.float64) * 2
    t = torch.randint(0, C, (N,), generator=gen)
    v = torch.randn(N, C, generator=gen, dtype=torch.float64)
    results = []
    for ce in (crossent.cross_entropy, F.cross_entropy):
        x = z.clone().requires_grad_()
        (g,) = torch.autograd.grad(ce(x, t, reduction="sum", label_smoothing=0.1), x, create_graph=True)
        (hvp,) = torch.autograd.grad(g, x, v)
        x2 = z.clone().requires_grad_()
        loss = ce(x2, t)
        (g2,) = torch.autograd.grad(loss, x2, create_graph=True)
        (loss + 10 * g2.pow(2).sum()).backward()
        results.append((hvp, x2.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_second_derivative_without_the_logits_raises_and_names_the_remedy():
    x, w, t = _fused_size_problem()
    loss = crossent.cross_entropy(x @ w.T, t)  # the logits are freed after the forward
    with pytest.raises(RuntimeError, match=r"keep a reference to them .* crossent.use_backend\('composite'\)"):
        torch.autograd.grad(loss, w, create_graph=True)
    z = (x @ w.T).detach().requires_grad_()
    loss = crossent.cross_entropy(z, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match=r"modified in place since \(by inplace_backward=True"):
        torch.autograd.grad(loss, z, create_graph=True)


@pytest.mark.parametrize("call", [
    lambda z, t: crossent.cross_entropy(z, t, label_smoothing=0.1),
    lambda z, t: crossent.cross_entropy(z, t, reduction="none").sum(),
    lambda z, t: crossent.binary_cross_entropy_with_logits(z, torch.rand_like(z, dtype=z.dtype).round()),
], ids=["ce", "ce none", "bce_with_logits"])
def test_repeated_backward_with_retain_graph_gives_the_gradient_each_time(call):
    torch.manual_seed(4)
    z = torch.randn(N, C, requires_grad=True)
    t = torch.randint(0, C, (N,))
    loss = call(z, t)
    first = torch.autograd.grad(loss, z, retain_graph=True)[0]
    second = torch.autograd.grad(loss, z, retain_graph=True)[0]
    loss.backward()
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(z.grad, first, rtol=1e-5, atol=1e-9)


def test_linear_repeated_backward_with_retain_graph():
    x, w, t = _fused_size_problem()
    loss = crossent.linear_cross_entropy(x, w, t)
    first = torch.autograd.grad(loss, w, retain_graph=True)[0]
    second = torch.autograd.grad(loss, w)[0]
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- torch.func


def test_torch_func_grad_vmap_jacrev_equal_torch_at_fused_sizes():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(N, C, generator=gen)
    t = torch.randint(0, C, (N,), generator=gen)
    kw = dict(label_smoothing=0.1)
    for transform in (torch.func.grad, torch.func.jacrev):
        ours = transform(lambda z: crossent.cross_entropy(z, t, **kw))(z)
        theirs = transform(lambda z: F.cross_entropy(z, t, **kw))(z)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-8)
    zs = torch.randn(2, N, C, generator=gen)
    ours = torch.func.vmap(lambda z: crossent.cross_entropy(z, t, reduction="none"))(zs)
    theirs = torch.func.vmap(lambda z: F.cross_entropy(z, t, reduction="none"))(zs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours = torch.func.vmap(torch.func.grad(lambda z: crossent.cross_entropy(z, t)))(zs)
    theirs = torch.func.vmap(torch.func.grad(lambda z: F.cross_entropy(z, t)))(zs)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-9)
    x = torch.randn(N, 16, generator=gen)
    w = torch.randn(C, 16, generator=gen)
    ours = torch.func.grad(lambda w: crossent.linear_cross_entropy(x, w, t))(w)
    theirs = torch.func.grad(lambda w: F.cross_entropy(x @ w.T, t))(w)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    # the transformed argument need not be the input: vmap over the weights, or the class weights
    ws = torch.randn(2, C, 16, generator=gen)
    ours = torch.func.vmap(lambda w: crossent.linear_cross_entropy(x, w, t))(ws)
    theirs = torch.func.vmap(lambda w: F.cross_entropy(x @ w.T, t))(ws)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    cws = torch.rand(2, C, generator=gen) + 0.5
    ours = torch.func.vmap(lambda cw: crossent.cross_entropy(z, t, cw, label_smoothing=0.1))(cws)
    theirs = torch.func.vmap(lambda cw: F.cross_entropy(z, t, cw, label_smoothing=0.1))(cws)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- autocast


@pytest.mark.parametrize("size", [(64, 10), (256, 4000)], ids=["torch-route", "fused"])
def test_autocast_returns_torchs_float32_loss(size):
    gen = torch.Generator().manual_seed(6)
    z = (torch.randn(*size, generator=gen) * 3).bfloat16()
    t = torch.randint(0, size[1], (size[0],), generator=gen)
    w = torch.rand(size[1], generator=gen) + 0.5  # float32 weights: autocast casts, no error
    results = []
    for ce in (crossent.cross_entropy, F.cross_entropy):
        x = z.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ce(x, t, w, label_smoothing=0.1)
        loss.backward()
        results.append((loss, x.grad))
    (ours, g_ours), (theirs, g_theirs) = results
    assert ours.dtype == theirs.dtype == torch.float32
    assert g_ours.dtype == g_theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours.float(), g_theirs.float(), rtol=2e-2, atol=1e-6)


def test_autocast_for_the_other_losses():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(512, 2048, generator=gen).bfloat16()
    y = torch.rand(512, 2048, generator=gen).bfloat16()
    t = torch.randint(0, 2048, (512,), generator=gen)
    h, w = torch.randn(512, 64, generator=gen), torch.randn(2048, 64, generator=gen)
    pairs = [
        (lambda: crossent.nll_loss(x, t), lambda: F.nll_loss(x, t)),
        (lambda: crossent.binary_cross_entropy_with_logits(x, y), lambda: F.binary_cross_entropy_with_logits(x, y)),
        (lambda: crossent.binary_cross_entropy(y, y), lambda: F.binary_cross_entropy(y, y)),
        (lambda: crossent.linear_cross_entropy(h, w, t), lambda: F.cross_entropy(F.linear(h, w), t)),
    ]
    for path in (None, Backend.FUSED, Backend.COMPOSITE):
        with torch.autocast("cpu", dtype=torch.bfloat16), crossent.use_backend(path) if path else _auto():
            for ours, theirs in pairs:
                a, b = ours(), theirs()
                assert a.dtype == b.dtype == torch.float32, path
                torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-5)


class _auto:
    def __enter__(self):
        pass

    def __exit__(self, *exc):
        pass


def test_autocast_gradients_keep_the_inputs_dtype():
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(64, 300, generator=gen).bfloat16()
    y = torch.rand(64, 300, generator=gen).bfloat16()
    t = torch.randint(0, 300, (64,), generator=gen)
    calls = [
        lambda m, x: m.nll_loss(x.log_softmax(1), t),
        lambda m, x: m.binary_cross_entropy_with_logits(x, y),
        lambda m, x: m.binary_cross_entropy(x.sigmoid(), y),
    ]
    for call in calls:
        grads = []
        for m, path in ((crossent, Backend.FUSED), (F, None)):
            x = z.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16), crossent.use_backend(path) if path else _auto():
                loss = call(m, x)
            assert loss.dtype == torch.float32
            loss.backward()
            grads.append(x.grad)
        assert grads[0].dtype == grads[1].dtype == torch.bfloat16
        torch.testing.assert_close(grads[0].float(), grads[1].float(), rtol=2e-2, atol=1e-5)


def test_jit_trace_works():
    x, t = torch.randn(8, 5), torch.randint(0, 5, (8,))
    traced = torch.jit.trace(lambda x: crossent.cross_entropy(x, t, label_smoothing=0.1), (x,))
    torch.testing.assert_close(traced(x), F.cross_entropy(x, t, label_smoothing=0.1))


def test_elementwise_mean_is_mean_with_torchs_warning():
    x, t = torch.randn(8, 5), torch.randint(0, 5, (8,))
    with pytest.warns(UserWarning, match="reduction='elementwise_mean' is deprecated"):
        ours = crossent.cross_entropy(x, t, reduction="elementwise_mean")
    torch.testing.assert_close(ours, F.cross_entropy(x, t))
    with pytest.warns(UserWarning, match="elementwise_mean"):
        assert torch.equal(crossent.nn.CrossEntropyLoss(reduction="elementwise_mean")(x, t), ours)


def test_neg_inf_masked_logits_under_torch_func_and_compile_at_fused_sizes():
    """Masked logits (-inf) give torch's value and gradient where the composite formulas run
    (torch.func above the torch route's size, torch.compile), without and with smoothing (torch's
    inf), for class indices and probability targets (torch's nan without smoothing)."""
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(N, C, generator=gen)
    t = torch.randint(1, C, (N,), generator=gen)
    z[:, 0] = float("-inf")  # class 0 forbidden
    probs = torch.rand(N, C, generator=gen).softmax(1)
    probs[:, 0] = 0.0
    for target, kw in ((t, {}), (t, dict(label_smoothing=0.1)), (probs, {}), (probs, dict(label_smoothing=0.2))):
        for transform in (torch.func.grad_and_value,):
            (g_ours, v_ours) = transform(lambda z: crossent.cross_entropy(z, target, **kw))(z)
            (g_theirs, v_theirs) = transform(lambda z: F.cross_entropy(z, target, **kw))(z)
            torch.testing.assert_close(v_ours, v_theirs, equal_nan=True)
            torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-8)
        compiled = torch.compile(lambda z: crossent.cross_entropy(z, target, **kw), fullgraph=True,
                                 backend="aot_eager")
        torch.testing.assert_close(compiled(z), F.cross_entropy(z, target, **kw), equal_nan=True)
    # a -inf bias of the linear loss (the fused path, composite under torch.func)
    x = torch.randn(N, 16, generator=gen)
    w = torch.randn(C, 16, generator=gen)
    b = torch.zeros(C)
    b[0] = float("-inf")
    for call in (lambda w: crossent.linear_cross_entropy(x, w, t, linear_bias=b),):
        g_ours, v_ours = torch.func.grad_and_value(call)(w)
        g_theirs, v_theirs = torch.func.grad_and_value(lambda w: F.cross_entropy(x @ w.T + b, t))(w)
        torch.testing.assert_close(v_ours, v_theirs)
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-7)
    wl = w.clone().requires_grad_()
    crossent.linear_cross_entropy(x, wl, t, linear_bias=b).backward()
    wt = w.clone().requires_grad_()
    F.cross_entropy(x @ wt.T + b, t).backward()
    torch.testing.assert_close(wl.grad, wt.grad, rtol=1e-4, atol=1e-7)
