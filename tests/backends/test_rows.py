"""The row math is written once (backends/rows.py) and followed by every implementation: the torch-op
kernel (chunked), the Triton kernel (which mirrors it step by step), the composite backend (the
steps through autograd) and the vocab-parallel partials. They must agree with each other -- and
with the independent float64 reference -- on extreme inputs: huge and masked logits, saturating
softcaps, ignored rows, probability targets with zeros, zero class weights; and the binary losses'
one formula on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import crossent
from conftest import assert_close, assert_no_worse_than_torch
from crossent import Backend, reference

ROW_MATH = [Backend.FUSED, Backend.TRITON, Backend.COMPOSITE]


def _extreme_logits(dtype):
    x = torch.tensor([
        [1e4, -1e4, 0.0, 3.0, -2.0, 1e-7],
        [-80.0, 80.0, 80.0, -80.0, 0.5, 0.25],
        [float("-inf"), 2.0, float("-inf"), 1.0, 0.0, -1.0],
        [30.0, 30.0, 30.0, 30.0, 30.0, 30.0],
        [1e-30, -1e-30, 0.0, 0.0, 0.0, 0.0],
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
    ], dtype=torch.float64)
    return x.to(dtype)


CASES = {
    "plain": {},
    "smoothing+weights": dict(label_smoothing=0.1, weighted=True),
    "z_loss+softcap": dict(z_loss=1e-3, softcap=1.0),
    "huge softcap": dict(softcap=1e4),
    "all options": dict(label_smoothing=0.2, weighted=True, z_loss=1e-2, softcap=20.0, ignore_index=1),
}


def _run(backend, x, t, w, kw):
    xa = x.clone().requires_grad_()
    with crossent.use_backend(backend):
        loss = crossent.cross_entropy(xa, t, w, reduction="none", **kw)
    (g,) = torch.autograd.grad(loss.sum(), xa)
    return loss.detach(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("case", CASES)
def test_every_row_math_implementation_agrees_on_extreme_inputs(case, soft, dtype, small_blocks):
    """(small_blocks: the Triton kernel's two-pass loop over blocks of 16 classes runs too, with
    the online max rescaling the sum of exps.)"""
    kw = dict(CASES[case])
    x = _extreme_logits(dtype)
    x = torch.cat([torch.cat([x, x[:, :3] * 0.5], 1)] * 5, 1)  # 45 classes: over SINGLE_BLOCK_MAX
    # (32 under small_blocks), so Triton loops over blocks of 16 with its online max
    n, c = x.shape
    w = (torch.rand(c, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5).to(dtype) if kw.pop("weighted", False) else None
    if w is not None:
        w[4] = 0.0  # a class that counts for nothing
    if soft:
        kw.pop("ignore_index", None)
        t = torch.rand(n, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t[:, ::7] = 0.0
        t = (t / t.sum(1, keepdim=True)).to(dtype)
        finite = ~torch.isinf(x)
        t = torch.where(finite, t, 0.0)  # (no mass on a masked class: else inf or nan, below)
    else:
        t = torch.tensor([0, 1, 3, 2, 5, 4])
    results = {b: _run(b, x, t, w, kw) for b in ROW_MATH}
    xr = x.double().requires_grad_()
    ref = reference.cross_entropy(xr, t.double() if soft else t, w.double() if w is not None else None,
                                  reduction="none", **kw)
    (gr,) = torch.autograd.grad(ref.sum(), xr)
    # torch's own error at these magnitudes (|x| = 1e4 in float32) is the yardstick
    z = x if kw.get("softcap") is None else kw["softcap"] * torch.tanh(x / kw["softcap"])
    zt = z.clone().requires_grad_()
    theirs = TF.cross_entropy(zt, t, w, reduction="none", label_smoothing=kw.get("label_smoothing", 0.0),
                              ignore_index=kw.get("ignore_index", -100))
    if kw.get("z_loss"):
        theirs = theirs + kw["z_loss"] * torch.logsumexp(zt, 1) ** 2 * (t != kw.get("ignore_index", -100) if not soft else 1)
    for b, (loss, g) in results.items():
        assert_no_worse_than_torch(loss, theirs.detach(), ref, dtype)
        assert torch.equal(torch.isnan(g), torch.isnan(gr)), b
    # the torch-op and Triton kernels compute the same steps: the same values to rounding
    (lf, gf), (lt, gt) = results[Backend.FUSED], results[Backend.TRITON]
    f32 = dtype == torch.float32
    torch.testing.assert_close(lt, lf, rtol=1e-6 if f32 else 1e-10, atol=1e-7 if f32 else 1e-13, equal_nan=True)
    torch.testing.assert_close(gt, gf, rtol=1e-5 if f32 else 1e-10, atol=1e-7 if f32 else 1e-13, equal_nan=True)


@pytest.mark.parametrize("backend", [*ROW_MATH, Backend.REFERENCE, Backend.TORCH])
def test_non_finite_results_are_torchs_on_every_backend(backend):
    """Where torch's loss is inf or nan (a -inf logit under smoothing, or with target mass), so is
    crossent's, with torch's finite gradient."""
    x = torch.tensor([[float("-inf"), 1.0, 2.0], [0.0, float("-inf"), 1.0]], dtype=torch.float64)
    cases = [
        (torch.tensor([1, 2]), dict(label_smoothing=0.1)),  # inf
        (torch.tensor([0, 2]), {}),  # target at -inf: inf
        (torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]], dtype=torch.float64), {}),  # 0 * -inf: nan
        (torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]], dtype=torch.float64), dict(label_smoothing=0.3)),
    ]
    for t, kw in cases:
        xa, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        with crossent.use_backend(backend):
            ours = crossent.cross_entropy(xa, t, reduction="none", **kw)
        theirs = TF.cross_entropy(xt, t, reduction="none", **kw)
        torch.testing.assert_close(ours, theirs, equal_nan=True)
        (go,), (gt,) = torch.autograd.grad(ours.sum(), xa), torch.autograd.grad(theirs.sum(), xt)
        torch.testing.assert_close(go, gt, equal_nan=True)


X_EXTREME = [-float("inf"), -1e4, -100.0, -30.0, -20.0, -1e-8, 0.0, 1e-8, 20.0, 30.0, 100.0, 1e4, float("inf")]


@pytest.mark.parametrize("backend", [*ROW_MATH, Backend.REFERENCE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_bce_with_logits_formula_on_every_backend(backend, dtype):
    """The cancellation-free form everywhere: at x = -20, y = 0 the loss is softplus(-20) = 2.06e-9
    (torch's (1-y) x + softplus(-x) rounds it to 0 in float32); at x = 20, y = 1 likewise; at
    x = -inf torch's nan; every gradient torch's."""
    x = torch.tensor(X_EXTREME, dtype=torch.float64).repeat_interleave(4)
    y = torch.tensor([0.0, 0.3, 1.0, 0.7], dtype=torch.float64).repeat(len(X_EXTREME))
    pw = torch.tensor(2.5, dtype=torch.float64)
    for kw in ({}, dict(pos_weight=pw.expand(x.shape).clone())):
        xa = x.to(dtype).requires_grad_()
        with crossent.use_backend(backend):
            ours = crossent.binary_cross_entropy_with_logits(xa, y.to(dtype), reduction="none",
                                                             **{k: v.to(dtype) for k, v in kw.items()})
        (g,) = torch.autograd.grad(ours.sum(), xa)
        xr = x.clone().requires_grad_()
        ref = reference.binary_cross_entropy_with_logits(xr, y, reduction="none", **kw)
        (gr,) = torch.autograd.grad(ref.sum(), xr)
        assert_close(ours, ref, dtype)
        assert_close(g, gr, dtype)
        tiny = (x == -20.0) & (y == 0.0)
        assert_close(ours[tiny], torch.full((1,), 2.0611536181902037e-09, dtype=torch.float64), dtype)
        assert torch.isnan(ours[x == -float("inf")]).all()
