"""The log-probability steps (backends/rows_log_probs.py) agree on extreme rows across every
implementation -- the torch-op kernels, the Triton kernels (interpreter), the composite backend,
torch's composition -- and with the independent float64 reference: huge common offsets, masked
(-inf) logits, ties, saturating softcaps, tiny temperatures, ignored rows."""

from __future__ import annotations

import pytest
import torch

import crossent
from conftest import assert_close
from crossent import Backend, reference

BACKENDS = [Backend.FUSED, Backend.TRITON, Backend.COMPOSITE, Backend.TORCH]


def _extreme_rows():
    return torch.tensor([
        [1e4, 1e4 - 1.0, 1e4 - 3.0, 1e4 + 0.5, 1e4 - 20.0, 1e4],   # a common offset of 1e4
        [float("-inf"), 2.0, float("-inf"), 1.0, 0.0, -1.0],       # masked tokens
        [30.0, 30.0, 30.0, 30.0, 30.0, 30.0],                       # ties: H = log 6
        [80.0, -80.0, -80.0, -80.0, -80.0, -80.0],                  # p underflows off the max
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],                             # ignored
    ], dtype=torch.float64)


CASES = {"plain": {}, "cold": dict(temperature=0.05), "hot": dict(temperature=20.0),
         "softcap": dict(softcap=2.0), "softcap+T": dict(softcap=50.0, temperature=0.7)}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("backend", BACKENDS, ids=[b.value for b in BACKENDS])
def test_extreme_rows_agree_with_the_reference(backend, case):
    if backend is Backend.TRITON:
        pytest.importorskip("triton")
    x = _extreme_rows()
    t = torch.tensor([0, 3, 2, 1, 5, -100])
    w = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.4, 5.0], dtype=torch.float64)  # per-row weights
    x64 = x.clone().requires_grad_()
    lp64, h64 = reference.log_probs(x64, t, return_entropy=True, **case)
    g64, = torch.autograd.grad((lp64 * w + h64 * w.flip(0)).sum(), x64)
    for dtype in (torch.float64, torch.float32):
        xi = x.to(dtype).requires_grad_()
        with crossent.use_backend(backend):
            lp, h = crossent.log_probs(xi, t, return_entropy=True, **case)
        g, = torch.autograd.grad((lp * w.to(lp.dtype) + h * w.flip(0).to(h.dtype)).sum(), xi)
        assert torch.isfinite(lp).all() and torch.isfinite(h).all() and torch.isfinite(g).all()
        scale = 1.0 if dtype == torch.float64 else 1e4 * 1.2e-7  # (float32 holds 1e4 to its ulp)
        tol = dict(atol=1e-9 + 8 * scale, rtol=1e-6)
        torch.testing.assert_close(lp.double(), lp64, **tol)
        torch.testing.assert_close(h.double(), h64, **tol)
        torch.testing.assert_close(g.double(), g64, atol=tol["atol"] / case.get("temperature", 1.0), rtol=1e-5)
    assert lp[5] == 0 and h[5] == 0 and torch.equal(g[5], torch.zeros(6, dtype=g.dtype))
    assert_close(h[2].double(), torch.log(torch.tensor(6.0, dtype=torch.float64)), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS, ids=[b.value for b in BACKENDS])
def test_nan_where_torch_gives_nan(backend):
    """All -inf, +inf or nan in a row: nan outputs, as torch's log_softmax."""
    if backend is Backend.TRITON:
        pytest.importorskip("triton")
    x = torch.tensor([[float("-inf")] * 4, [float("inf"), 0.0, 1.0, 2.0], [float("nan"), 0.0, 1.0, 2.0],
                      [0.0, 1.0, 2.0, 3.0]])
    with crossent.use_backend(backend):
        lp, h = crossent.log_probs(x, torch.tensor([1, 2, 3, 0]), return_entropy=True)
    assert torch.isnan(lp[:3]).all() and torch.isnan(h[:3]).all()
    assert torch.isfinite(lp[3]) and torch.isfinite(h[3])
