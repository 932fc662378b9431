"""The Triton binary cross-entropy kernel against torch and the float64 reference: on logits (with
pos_weight) and on probabilities, every broadcast of weight / pos_weight, every reduction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close, skip_without_triton

skip_without_triton()

# (input shape, weight shape, pos_weight shape): trailing broadcasts (read modulo their size),
# leading ones (materialised), none.
BROADCASTS = [
    ((6, 5), None, None),
    ((6, 5), (5,), (5,)),
    ((6, 5), (6, 1), (1, 5)),
    ((2, 3, 4), (3, 4), (4,)),
    ((2, 3, 4), (2, 1, 1), None),
    ((1500,), (), None),  # two programs of BINARY_BLOCK, the second partial
    ((), None, None),
]


def _tensors(shape, wshape, pwshape, dtype, logits, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    if not logits:
        x = x.sigmoid()
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    w = torch.rand(wshape, generator=gen, dtype=torch.float64) + 0.2 if wshape is not None else None
    pw = torch.rand(pwshape, generator=gen, dtype=torch.float64) * 3 if pwshape is not None else None
    cast = lambda t: t.to(dtype) if t is not None else None
    return cast(x), cast(y), cast(w), cast(pw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("logits", [True, False], ids=["with_logits", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch(dtype, logits, reduction):
    gen = torch.Generator().manual_seed(11)
    for shape, wshape, pwshape in BROADCASTS:
        x, y, w, pw = _tensors(shape, wshape, pwshape, dtype, logits, gen)
        xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        with crossent.use_backend("triton"):
            if logits:
                ours = crossent.binary_cross_entropy_with_logits(xa, y, w, reduction=reduction, pos_weight=pw)
            else:
                ours = crossent.binary_cross_entropy(xa, y, w, reduction=reduction)
        if logits:
            theirs = F.binary_cross_entropy_with_logits(xt, y, w, reduction=reduction, pos_weight=pw)
        else:
            theirs = F.binary_cross_entropy(xt, y, w, reduction=reduction)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert_close(ours, theirs)
        go = torch.rand(ours.shape, dtype=dtype) + 0.5
        assert_close(torch.autograd.grad(ours, xa, go)[0], torch.autograd.grad(theirs, xt, go)[0])


def test_extreme_logits_keep_their_tiny_losses():
    """softplus(-x) for large x is ~exp(-x): the kernel's log1p (no libdevice) keeps it, where
    log(1 + e) would round to 0, and its form without cancellation keeps it where torch's (1-y) x
    + softplus(-x) rounds to 0 (even in float64 at |x| = 90): the oracle is that form in float64."""
    x = torch.tensor([-90.0, -30.0, -17.0, -1e-7, 0.0, 1e-7, 17.0, 30.0, 90.0], dtype=torch.float32)
    for y in (torch.ones_like(x), torch.zeros_like(x)):
        with crossent.use_backend("triton"):
            ours = crossent.binary_cross_entropy_with_logits(x, y, reduction="none")
        x64, y64 = x.double(), y.double()
        want = y64 * F.softplus(-x64) + (1 - y64) * F.softplus(x64)
        torch.testing.assert_close(ours.double(), want, rtol=2e-6, atol=0)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # (the interpreter's numpy log(0))
def test_probabilities_at_0_and_1_are_clamped_as_torch():
    x = torch.tensor([0.0, 1.0, 0.5, 1e-30], dtype=torch.float32, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.5, 1.0])
    with crossent.use_backend("triton"):
        ours = crossent.binary_cross_entropy(x, y, reduction="none")
    xt = x.detach().clone().requires_grad_()
    theirs = F.binary_cross_entropy(xt, y, reduction="none")
    assert_close(ours, theirs)
    go = torch.ones(4)
    assert_close(torch.autograd.grad(ours, x, go)[0], torch.autograd.grad(theirs, xt, go)[0])
