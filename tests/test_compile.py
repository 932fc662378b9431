"""torch.compile(fullgraph=True) compiles crossent's losses (no graph break) with eager's results,
on the torch route (small) and at fused sizes (where the composite formulas are traced)."""

from __future__ import annotations

import pytest
import torch

import crossent
from crossent.backends.chunked import TORCH_MAX_NUMEL

pytestmark = pytest.mark.slow


def _both(fn, *tensors):
    """(eager loss, eager grads), (compiled loss, compiled grads) of fn(*tensors)."""
    out = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
        loss = f(*leaves)
        grads = torch.autograd.grad(loss.sum(), [t for t in leaves if t.requires_grad])
        out.append((loss, grads))
    return out


CASES = {
    "cross_entropy": lambda x, t: crossent.cross_entropy(x, t, label_smoothing=0.1),
    "cross_entropy z_loss softcap": lambda x, t: crossent.cross_entropy(x, t, z_loss=1e-3, softcap=20.0),
    "cross_entropy none": lambda x, t: crossent.cross_entropy(x, t, reduction="none"),
    "nll_loss": lambda x, t: crossent.nll_loss(x.log_softmax(1), t),
    "bce_with_logits": lambda x, t: crossent.binary_cross_entropy_with_logits(x, (x > 0).to(x.dtype)),
}


# (rows, 500) just above TORCH_MAX_NUMEL: the rule's fused size (rule 2 picks torch's kernel below it)
FUSED_ROWS = TORCH_MAX_NUMEL // 500 + 16


@pytest.mark.parametrize("shape", [(16, 10), (FUSED_ROWS, 500)], ids=["small", "fused-size"])
@pytest.mark.parametrize("name", CASES)
def test_losses_compile_without_graph_breaks(name, shape):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    t = torch.randint(0, shape[1], (shape[0],), generator=gen)
    (a, ga), (b, gb) = _both(CASES[name], x, t)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [16, 2000], ids=["small", "fused-size"])
def test_linear_cross_entropy_compiles_without_graph_breaks(n):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(n, 32, generator=gen), torch.randn(500, 32, generator=gen)
    t = torch.randint(0, 500, (n,), generator=gen)
    fn = lambda h, w, t: crossent.linear_cross_entropy(h, w, t, label_smoothing=0.1, normalizer=7.0)
    (a, ga), (b, gb) = _both(fn, h, w, t)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)


def test_inductor_compiles_the_fused_size_loss():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(FUSED_ROWS, 500, generator=gen, requires_grad=True)
    t = torch.randint(0, 500, (FUSED_ROWS,), generator=gen)
    f = torch.compile(lambda x: crossent.cross_entropy(x, t), fullgraph=True)
    torch.testing.assert_close(f(x), torch.nn.functional.cross_entropy(x, t), rtol=1e-5, atol=1e-6)


def _graph_ops(fn, *args):
    """The ops in the graph Dynamo hands the backend (fullgraph: one graph)."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch.compile(fn, fullgraph=True, backend=backend)(*args)
    return seen


LINEAR_CASES = {
    "plain": {},
    "weight+smoothing": {"weight": True, "label_smoothing": 0.2},
    "z_loss+softcap+normalizer": {"z_loss": 1e-3, "softcap": 5.0, "normalizer": 7.0},
    "sum+bias": {"reduction": "sum", "bias": True},
    "probabilities": {"soft": True, "label_smoothing": 0.1},
    "k-dim heads": {"heads": (2,)},
}


@pytest.mark.parametrize("name", LINEAR_CASES)
def test_compiled_linear_cross_entropy_is_one_custom_op_with_eager_results(name):
    """The scalar reductions compile to crossent::linear_cross_entropy_fused (the fused forward, gradients
    returned, scaled in backward): never the N x V logits, every option, eager's values."""
    from linear_helpers import make

    torch._dynamo.reset()
    kw = dict(LINEAR_CASES[name])
    heads, soft, bias = kw.pop("heads", ()), kw.pop("soft", False), kw.pop("bias", False)
    x, w, b, t = make(40, 8, 300, heads=heads, soft=soft, bias=bias, seed=3)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(300) + 0.2
    fn = lambda x, w, t, b: crossent.linear_cross_entropy(x, w, t, linear_bias=b, **kw)
    with crossent.use_backend("fused"):  # (tiny problems would take the composition otherwise)
        assert "crossent.linear_cross_entropy_fused.default" in _graph_ops(fn, x, w, t, b)
        outs = []
        for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
            leaves = [a.detach().clone().requires_grad_() if a is not None else None for a in (x, w, b)]
            loss = f(leaves[0], leaves[1], t, leaves[2])
            outs.append((loss, torch.autograd.grad(loss * 0.7, [a for a in leaves if a is not None])))
    (a, ga), (c, gc) = outs
    torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-6)
    for u, v in zip(ga, gc):
        torch.testing.assert_close(v, u, rtol=1e-6, atol=1e-7)


def test_compiled_linear_retain_graph_and_reduction_none():
    """A second backward through the op gives the same gradients (they are scaled out of place);
    'none' compiles through the composite formulas, with eager's values."""
    from linear_helpers import make

    torch._dynamo.reset()
    x, w, _, t = make(32, 8, 200, bias=False, seed=4)
    with crossent.use_backend("fused"):
        f = torch.compile(lambda x, w: crossent.linear_cross_entropy(x, w, t), fullgraph=True, backend="aot_eager")
        xa = x.clone().requires_grad_()
        loss = f(xa, w)
        g1 = torch.autograd.grad(loss, xa, retain_graph=True)[0]
        g2 = torch.autograd.grad(loss, xa)[0]
        assert torch.equal(g1, g2)
        g = torch.compile(lambda x, w: crossent.linear_cross_entropy(x, w, t, reduction="none"),
                          fullgraph=True, backend="aot_eager")
        xb, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = g(xb, w), crossent.linear_cross_entropy(xc, w, t, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), xb)[0], torch.autograd.grad(want.sum(), xc)[0])


def test_inductor_compiles_the_linear_custom_op():
    from linear_helpers import make

    torch._dynamo.reset()
    x, w, _, t = make(64, 16, 500, bias=False, seed=5)
    with crossent.use_backend("fused"):
        f = torch.compile(lambda x, w: crossent.linear_cross_entropy(x, w, t, label_smoothing=0.1), fullgraph=True)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = f(xa, w), crossent.linear_cross_entropy(xb, w, t, label_smoothing=0.1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, xa)[0], torch.autograd.grad(want, xb)[0])
