"""torch.compile keeps the Triton cross-entropy kernel: the dispatch hands the traced call to the
custom op crossent::cross_entropy_triton (backends/loops/cross_entropy_op.py) instead of the
composite formulas; values and gradients equal the eager fused path's."""

from __future__ import annotations

import pytest
import torch

import crossent
from conftest import assert_close, skip_without_triton

skip_without_triton()


@pytest.mark.parametrize("kw", [
    {}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none"}, {"reduction": "sum", "softcap": 5.0},
], ids=["mean", "none-everything", "sum-softcap"])
def test_compiled_cross_entropy_runs_the_triton_kernel(monkeypatch, kw):
    from crossent.backends.triton import ops

    launched = []
    real = ops.launch_ce
    monkeypatch.setattr(ops, "launch_ce", lambda *a, **k: launched.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 37, generator=gen, dtype=torch.float64) * 3
    t = torch.randint(0, 37, (6,), generator=gen)
    t[2] = -100
    f = torch.compile(lambda x, t: crossent.cross_entropy(x, t, **kw), fullgraph=True, backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        got = f(xc, t)
        assert launched  # (the composite formulas launch no Triton kernel)
        want = crossent.cross_entropy(xe, t, **kw)
    assert_close(got, want)
    go = torch.rand(got.shape, generator=gen, dtype=torch.float64) + 0.5
    assert_close(torch.autograd.grad(got, xc, go)[0], torch.autograd.grad(want, xe, go)[0])


def test_compiled_probability_targets_and_kdim():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 37, 2, generator=gen, dtype=torch.float64)
    p = torch.randn(3, 37, 2, generator=gen, dtype=torch.float64).softmax(1)
    f = torch.compile(lambda x, p: crossent.cross_entropy(x, p, label_smoothing=0.2), fullgraph=True,
                      backend="aot_eager")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    with crossent.use_backend("triton"):
        got = f(xc, p)
        want = crossent.cross_entropy(xe, p, label_smoothing=0.2)
    assert_close(got, want)
    assert_close(torch.autograd.grad(got, xc)[0], torch.autograd.grad(want, xe)[0])
