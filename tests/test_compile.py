"""torch.compile(fullgraph=True) compiles crossent's losses (no graph break) with eager's results,
on the torch route (small) and at fused sizes (where the composite formulas are traced)."""

from __future__ import annotations

import pytest
import torch

import crossent

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


@pytest.mark.parametrize("shape", [(16, 10), (2000, 500)], ids=["small", "fused-size"])
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
    x = torch.randn(2000, 500, generator=gen, requires_grad=True)
    t = torch.randint(0, 500, (2000,), generator=gen)
    f = torch.compile(lambda x: crossent.cross_entropy(x, t), fullgraph=True)
    torch.testing.assert_close(f(x), torch.nn.functional.cross_entropy(x, t), rtol=1e-5, atol=1e-6)
