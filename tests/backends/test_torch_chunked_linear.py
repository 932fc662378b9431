"""Fused linear cross-entropy against the unfused composition it promises to equal.

Oracles, per case: crossent.cross_entropy(F.linear(...)) (every option), torch's
F.cross_entropy(F.linear(...)) (the options torch has), and float64 (16-bit: no worse than the
unfused 16-bit composition). Values and gradients w.r.t. input, weight and bias, with a
grad_output != 1. Then chunk sizes, the chunk-size rule, autograd corner cases, bad inputs, and
peak memory measured in fresh subprocesses. Last, the composed route small CPU problems take.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close, assert_no_worse_than_torch
from crossent._options import LossOptions
from crossent.backends import torch_chunked_linear

LCE = crossent.linear_cross_entropy


@pytest.fixture(autouse=True)
def _fused_path():
    """This module tests the fused kernel: small problems would otherwise take the composed
    F.linear + cross_entropy route (tested at the end of this module)."""
    with crossent.use_backend("fused"):
        yield


def unfused(x, w, t, b=None, *, ce=crossent.cross_entropy, class_weight=None, normalizer=None,
            reduction="mean", **kw):
    """The contract of linear_cross_entropy, literally: the full logits, then cross-entropy."""
    v = w.shape[0]
    logits = F.linear(x, w, b).reshape(-1, v)
    soft = t.is_floating_point()
    flat = t.reshape(-1, v) if soft else t.reshape(-1)
    red = "sum" if normalizer is not None else reduction
    loss = ce(logits, flat, weight=class_weight, reduction=red, **kw)
    if normalizer is not None:
        loss = loss / normalizer
    return loss.reshape(x.shape[:-1]) if reduction == "none" else loss


def make(shape, v, dtype=torch.float32, *, soft=False, bias=True, ignored=0.25, seed=0):
    """input (*shape), weight (V, D), bias (V,), targets with a fraction ignored (-100)."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * (2.0 / d**0.5)
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    tokens = shape[:-1]
    if soft:
        t = (torch.randn(*tokens, v, generator=gen, dtype=torch.float64) * 2).softmax(-1)
    else:
        t = torch.randint(0, v, tokens, generator=gen)
        if ignored and t.dim():
            t[torch.rand(tokens, generator=gen) < ignored] = -100
    cast = (lambda a: a.to(dtype)) if dtype != torch.float64 else (lambda a: a)
    return cast(x), cast(w), (cast(b) if b is not None else None), (cast(t) if soft else t)


def grads(loss, tensors, grad_out):
    leaves = [a for a in tensors if a is not None]
    return torch.autograd.grad(loss, leaves, grad_out)


def leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def grad_output(loss, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if loss.dim() == 0:
        return torch.tensor(0.7, dtype=loss.dtype)
    return torch.rand(loss.shape, generator=gen, dtype=torch.float64).to(loss.dtype) + 0.25


HARD = {
    "plain": {},
    "ignore_valid_class": {"ignore_index": 3},
    "smoothing": {"label_smoothing": 0.1},
    "class_weight": {"class_weight": True},
    "smoothing+class_weight": {"label_smoothing": 0.2, "class_weight": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 3.0},
    "everything": {"label_smoothing": 0.1, "class_weight": True, "z_loss": 1e-3, "softcap": 5.0},
}
SOFT = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "class_weight": {"class_weight": True},
    "smoothing+class_weight": {"label_smoothing": 0.2, "class_weight": True},
    "z_loss+softcap": {"z_loss": 1e-2, "softcap": 4.0},
}
TORCH_HAS = {"ignore_index", "label_smoothing", "class_weight"}


def resolve(opts, v, dtype, seed=3):
    opts = dict(opts)
    if opts.pop("class_weight", False):
        gen = torch.Generator().manual_seed(seed)
        opts["class_weight"] = (torch.rand(v, generator=gen, dtype=torch.float64) + 0.2).to(dtype)
    return opts


def check_parity(shape, v, dtype, opts, reduction, soft, bias, chunk_size=None, normalizer=None):
    x, w, b, t = make(shape, v, dtype, soft=soft, bias=bias, seed=len(shape) + v)
    if opts.get("ignore_index", -100) != -100 and not soft:
        t[t == -100] = opts["ignore_index"]  # a valid class, ignored wherever it occurs
    kw = dict(resolve(opts, v, dtype), reduction=reduction)
    if normalizer is not None:
        kw["normalizer"] = normalizer
    xa, wa, ba = leaves(x, w, b)
    xr, wr, br = leaves(x, w, b)
    ours = LCE(xa, wa, t, ba, chunk_size=chunk_size, **kw)
    ref = unfused(xr, wr, t, br, **kw)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert_close(ours, ref)
    go = grad_output(ours)
    g_ours = grads(ours, (xa, wa, ba), go)
    for g, g_ref in zip(g_ours, grads(ref, (xr, wr, br), go)):
        assert g.dtype == g_ref.dtype
        assert_close(g, g_ref)
    if normalizer is None and set(opts) <= TORCH_HAS:  # and torch's own composition
        xt, wt, bt = leaves(x, w, b)
        theirs = unfused(xt, wt, t, bt, ce=F.cross_entropy, **kw)
        assert_close(ours, theirs)
        for g, g_t in zip(g_ours, grads(theirs, (xt, wt, bt), go)):
            assert_close(g, g_t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", HARD.values(), ids=HARD.keys())
@pytest.mark.parametrize("shape,v,chunk", [
    ((13, 8), 37, None),   # one chunk
    ((13, 8), 37, 4),      # 4 chunks, the last one short
    ((2, 5, 8), 23, 3),    # 3-D input [B, T, D]
])
def test_hard_targets_match_unfused(shape, v, chunk, opts, reduction):
    for bias in (True, False):
        check_parity(shape, v, torch.float32, opts, reduction, soft=False, bias=bias, chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", SOFT.values(), ids=SOFT.keys())
@pytest.mark.parametrize("shape,v,chunk", [((9, 6), 17, None), ((9, 6), 17, 2), ((3, 2, 6), 11, 4)])
def test_probability_targets_match_unfused(shape, v, chunk, opts, reduction):
    for bias in (True, False):
        check_parity(shape, v, torch.float32, opts, reduction, soft=True, bias=bias, chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_odd_large_vocabulary(reduction, soft):
    """V = 50257 (GPT-2's vocabulary: a prime times 29), small N and D; the default chunk size."""
    opts = {"label_smoothing": 0.1, "z_loss": 1e-4} if soft else {"class_weight": True, "label_smoothing": 0.1}
    check_parity((6, 4), 50257, torch.float32, opts, reduction, soft=soft, bias=True)


@pytest.mark.parametrize("opts", [{}, HARD["everything"]], ids=["plain", "everything"])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_float64_matches_unfused(opts, chunk):
    check_parity((11, 7), 19, torch.float64, opts, "mean", soft=False, bias=True, chunk_size=chunk)
    check_parity((11, 7), 19, torch.float64, opts, "none", soft=False, bias=True, chunk_size=chunk)


@pytest.mark.parametrize("normalizer", [7, 123.5, torch.tensor(40.0)])
@pytest.mark.parametrize("opts", [{}, HARD["everything"]], ids=["plain", "everything"])
def test_normalizer_divides_the_summed_loss(normalizer, opts):
    n = normalizer.item() if isinstance(normalizer, torch.Tensor) else normalizer
    check_parity((10, 6), 13, torch.float32, opts, "mean", soft=False, bias=True, chunk_size=3,
                 normalizer=normalizer)
    x, w, b, t = make((10, 6), 13)
    total = LCE(x, w, t, b, reduction="sum")
    assert_close(LCE(x, w, t, b, normalizer=normalizer), total / n)


def test_normalizer_with_probability_targets():
    check_parity((8, 5), 9, torch.float32, {}, "mean", soft=True, bias=False, normalizer=3.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_targets_ignored(reduction):
    """'mean' is 0/0 = nan as in torch; every gradient is exactly zero."""
    x, w, b, _ = make((5, 4), 7)
    t = torch.full((5,), -100)
    xa, wa, ba = leaves(x, w, b)
    ours = LCE(xa, wa, t, ba, reduction=reduction)
    theirs = F.cross_entropy(F.linear(x, w, b), t, reduction=reduction)
    assert_close(ours, theirs)
    for g in torch.autograd.grad(ours.sum(), (xa, wa, ba)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_and_empty_inputs(reduction):
    """input (D,) with target (); input (0, D) with target (0,): as F.linear + cross_entropy."""
    x, w, b, t = make((1, 5), 9, ignored=0)
    check = [(x[0], t[0]), (x[:0], t[:0])]
    for xi, ti in check:
        xa, wa, ba = leaves(xi, w, b)
        xr, wr, br = leaves(xi, w, b)
        ours = LCE(xa, wa, ti, ba, reduction=reduction)
        theirs = F.cross_entropy(F.linear(xr, wr, br), ti, reduction=reduction)
        assert ours.shape == theirs.shape
        assert_close(ours, theirs)
        for g, r in zip(torch.autograd.grad(ours.sum(), (xa, wa, ba)), torch.autograd.grad(theirs.sum(), (xr, wr, br))):
            assert_close(g, r)


# ----------------------------------------------------------------------------------------------
# 16-bit: tiny shapes (bfloat16 products are ~500x slower than float32 on CPU).


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [
    ("hard", {}), ("hard", HARD["everything"]), ("soft", SOFT["smoothing+class_weight"]),
], ids=["hard", "hard-everything", "soft-smoothing-weights"])
def test_16bit_no_worse_than_unfused(dtype, reduction, case):
    kind, opts = case
    soft = kind == "soft"
    x64, w64, b64, t64 = make((2, 5, 8), 29, torch.float64, soft=soft, seed=5)
    t16 = t64.to(dtype) if soft else t64
    kw = dict(resolve(opts, 29, dtype), reduction=reduction)
    kw64 = {k: (val.double() if k == "class_weight" else val) for k, val in kw.items()}
    xa, wa, ba = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    ours = LCE(xa, wa, t16, ba, chunk_size=4, **kw)
    # Unfused 16-bit composition (torch where it has the options), and float64 from the same values.
    xt, wt, bt = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    ce = F.cross_entropy if set(opts) <= TORCH_HAS else crossent.cross_entropy
    theirs = unfused(xt, wt, t16, bt, ce=ce, **kw)
    xr, wr, br = leaves(xa.detach().double(), wa.detach().double(), ba.detach().double())
    ref = unfused(xr, wr, t16.double() if soft else t16, br, **kw64)
    assert ours.dtype == theirs.dtype
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    go = grad_output(ref)
    g_ours = grads(ours, (xa, wa, ba), go.to(ours.dtype))
    g_theirs = grads(theirs, (xt, wt, bt), go.to(theirs.dtype))
    g_ref = grads(ref, (xr, wr, br), go)
    for a, th, r, leaf in zip(g_ours, g_theirs, g_ref, (xa, wa, ba)):
        assert a.dtype == leaf.dtype == dtype
        assert_no_worse_than_torch(a, th, r, dtype)


def test_16bit_mean_scale_is_applied_once_in_backward():
    """The stored 16-bit gradients are unscaled; a large grad_output (an AMP loss scale) and 1/N
    multiply once, in float32, so nothing underflows for large N in float16."""
    x, w, b, t = make((4096, 4), 5, torch.float16, ignored=0)
    scale = 1024.0
    xa, wa, ba = leaves(x, w, b)
    g = torch.autograd.grad(LCE(xa, wa, t, ba, chunk_size=1000), (xa, wa, ba), torch.tensor(scale, dtype=torch.float16))
    xt, wt, bt = leaves(x, w, b)
    g_t = torch.autograd.grad(unfused(xt, wt, t, bt, ce=F.cross_entropy), (xt, wt, bt), torch.tensor(scale, dtype=torch.float16))
    xr, wr, br = leaves(x.double(), w.double(), b.double())
    r = torch.autograd.grad(unfused(xr, wr, t, br), (xr, wr, br), torch.tensor(scale, dtype=torch.float64))
    for a, th, ref in zip(g, g_t, r):
        assert_no_worse_than_torch(a, th, ref, torch.float16)


# ----------------------------------------------------------------------------------------------
# Chunk size, autograd behaviour, the Module.


def test_chunk_size_rule():
    opts = LossOptions()
    rows = torch_chunked_linear.chunk_rows
    # float32: the chunk's logits take at most 7/8 of the bytes of the weight gradient: 7D/8 rows.
    assert rows(10 * 448, 512, 128256, torch.float32, opts) == 448
    assert rows(50 * 3584, 4096, 128256, torch.float32, opts) == 3584
    # Never more rows than tokens; chunks are balanced and a multiple of ROW_MULTIPLE (8) rows:
    # 2048 = 4 x 416 + 384 (not 4 x 448 + 256); 449 = 232 + 217 (not 448 + 1).
    assert rows(100, 512, 128256, torch.float32, opts) == 100
    assert rows(2048, 512, 128256, torch.float32, opts) == 416
    assert rows(449, 512, 128256, torch.float32, opts) == 232
    # A small layer gets at least 16 MiB (4194 rows of 1000 float32, rounded down to 4192); 16-bit
    # and softcap buffers count per row (bf16: 298 rows of 2 + 4 bytes, rounded down to 296).
    assert rows(10 * 4192, 16, 1000, torch.float32, opts) == 4192
    assert rows(10 * 296, 512, 128256, torch.bfloat16, opts) == 296
    capped = LossOptions(softcap=30.0)
    assert rows(10 * 224, 512, 128256, torch.float32, capped) == 224
    for n, d, v in [(1, 3, 5), (7, 1, 10**6), (10**5, 64, 50257)]:
        r = rows(n, d, v, torch.float32, opts)
        assert 1 <= r <= n
        m = torch_chunked_linear.ROW_MULTIPLE
        assert r == n or r < m or r % m == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_any_chunk_size_gives_the_same_result(chunk):
    x, w, b, t = make((7, 5), 11)
    base = LCE(x, w, t, b, chunk_size=None, reduction="none")
    assert_close(LCE(x, w, t, b, chunk_size=chunk, reduction="none"), base)


def test_frozen_operands_get_no_gradient():
    """Only what requires grad is differentiated: a frozen weight (or input) costs no product."""
    x, w, b, t = make((6, 4), 9)
    xa = x.clone().requires_grad_()
    loss = LCE(xa, w, t, b)
    (gx,) = torch.autograd.grad(loss, (xa,))
    xr = x.clone().requires_grad_()
    assert_close(gx, torch.autograd.grad(unfused(xr, w, t, b), (xr,))[0])
    wa = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(LCE(x, wa, t, b, reduction="none").sum(), (wa,))
    wr = w.clone().requires_grad_()
    assert_close(gw, torch.autograd.grad(unfused(x, wr, t, b, reduction="none").sum(), (wr,))[0])


def test_no_grad_gives_the_same_loss_and_no_graph():
    x, w, b, t = make((6, 4), 9)
    xa, wa, ba = leaves(x, w, b)
    with_graph = LCE(xa, wa, t, ba, label_smoothing=0.1)
    with torch.no_grad():
        without = LCE(xa, wa, t, ba, label_smoothing=0.1)
    assert without.grad_fn is None and with_graph.grad_fn is not None
    assert torch.equal(with_graph.detach(), without)


def test_inputs_are_not_modified():
    x, w, b, t = make((6, 4), 9)
    xa, wa, ba = leaves(x, w, b)
    versions = [a._version for a in (xa, wa, ba)]
    LCE(xa, wa, t, ba, softcap=2.0).backward()
    assert [a._version for a in (xa, wa, ba)] == versions
    assert torch.equal(xa.detach(), x) and torch.equal(wa.detach(), w) and torch.equal(ba.detach(), b)


def test_backward_twice():
    """'none' recomputes from saved inputs, so retain_graph works; scalar losses hand their
    precomputed gradients over once and say so on a second backward."""
    x, w, b, t = make((6, 4), 9)
    xa, wa, ba = leaves(x, w, b)
    loss = LCE(xa, wa, t, ba, reduction="none")
    first = torch.autograd.grad(loss.sum(), (xa, wa, ba), retain_graph=True)
    second = torch.autograd.grad(loss.sum(), (xa, wa, ba))
    for a, c in zip(first, second):
        assert torch.equal(a, c)
    loss = LCE(xa, wa, t, ba)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"linear_cross_entropy: the fused gradient of this loss was already handed"):
        loss.backward()


def test_reference_backend_computes_the_contract_and_class_weight_gradients():
    x, w, b, t = make((6, 4), 9)
    cw = torch.rand(9) + 0.5
    with crossent.use_backend("reference"):
        cwa = cw.clone().requires_grad_()
        ref = LCE(x, w, t, b, class_weight=cwa, label_smoothing=0.1, z_loss=1e-3, normalizer=4.0)
        (gcw,) = torch.autograd.grad(ref, (cwa,))
    assert_close(ref, LCE(x, w, t, b, class_weight=cw, label_smoothing=0.1, z_loss=1e-3, normalizer=4.0))
    cwr = cw.clone().requires_grad_()
    expected = unfused(x.double(), w.double(), t, b.double(), class_weight=cwr, label_smoothing=0.1,
                       z_loss=1e-3, normalizer=4.0, ce=crossent.reference.cross_entropy)
    assert_close(gcw, torch.autograd.grad(expected, (cwr,))[0].float())


def test_module_holds_the_options():
    cw = torch.rand(9) + 0.5
    m = crossent.nn.LinearCrossEntropyLoss(class_weight=cw, label_smoothing=0.1, z_loss=1e-3,
                                           softcap=4.0, reduction="sum", chunk_size=2)
    assert "class_weight" in m.state_dict()
    x, w, b, t = make((6, 4), 9)
    expected = LCE(x, w, t, b, class_weight=cw, label_smoothing=0.1, z_loss=1e-3, softcap=4.0,
                   reduction="sum", chunk_size=2)
    assert torch.equal(m(x, w, t, b), expected)
    m.normalizer, m.reduction = 5.0, "mean"
    assert_close(m(x, w, t), LCE(x, w, t, reduction="sum", class_weight=cw, label_smoothing=0.1,
                                 z_loss=1e-3, softcap=4.0) / 5.0)
    half = crossent.nn.LinearCrossEntropyLoss(dtype=torch.float32)
    xh, wh = x.bfloat16(), w.bfloat16()
    assert torch.equal(half(xh, wh, t), LCE(xh, wh, t, dtype=torch.float32))
    assert half(xh, wh, t).dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Bad inputs: (call, exception, message). Each message names the function, argument and value.

x0, w0, b0, t0 = make((4, 3), 6, ignored=0)
p0 = torch.rand(4, 6).softmax(-1)

ERRORS = [
    (lambda: LCE(x0, w0[:, :2], t0), ValueError,
     r"linear_cross_entropy: weight must have shape \(V, D\) with D = input.shape\[-1\] = 3, got weight of shape \(6, 2\)"),
    (lambda: LCE(x0, w0[0], t0), ValueError, r"weight must have shape \(V, D\) .* got weight of shape \(3,\)"),
    (lambda: LCE(x0, w0, t0[:3]), ValueError,
     r"target of class indices must have shape input.shape\[:-1\] = \(4,\) for input of shape \(4, 3\), got \(3,\)"),
    (lambda: LCE(x0.unsqueeze(0), w0, t0), ValueError, r"input.shape\[:-1\] = \(1, 4\) .* got \(4,\)"),
    (lambda: LCE(x0, w0, t0.float()), TypeError,
     r"target of class indices must be an integer tensor \(int64\) of shape input.shape\[:-1\] = \(4,\), got torch.float32"),
    (lambda: LCE(x0, w0, p0[:, :5]), TypeError, r"class probabilities need a floating target of shape \(4, 6\)"),
    (lambda: LCE(x0, w0, torch.tensor([0, 1, 6, 2])), ValueError,
     r"linear_cross_entropy: target contains 6 at index \(2,\), outside the classes \[0, 6\)"),
    (lambda: LCE(x0, w0, torch.tensor([0, -3, 1, 2])), ValueError, r"target contains -3 at index \(1,\)"),
    (lambda: LCE(x0, w0, p0, ignore_index=0), ValueError, r"ignore_index=0 cannot apply to class-probability targets"),
    (lambda: LCE(x0, w0.double(), t0), TypeError,
     r"weight has dtype torch.float64 but input has dtype torch.float32"),
    (lambda: LCE(x0, w0, t0, b0.half()), TypeError, r"bias has dtype torch.float16 but input has dtype torch.float32"),
    (lambda: LCE(x0, w0, t0, b0[:5]), ValueError, r"bias must have shape \(6,\), one entry per row of weight, got \(5,\)"),
    (lambda: LCE(x0, w0.to("meta"), t0), ValueError, r"weight is on meta but input is on cpu"),
    (lambda: LCE(x0, w0, t0, b0.to("meta")), ValueError, r"bias is on meta but input is on cpu"),
    (lambda: LCE(x0, w0, t0.to("meta")), ValueError, r"target is on meta but input is on cpu"),
    (lambda: LCE(x0.long(), w0, t0), TypeError, r"input must be a floating-point tensor, got dtype torch.int64"),
    (lambda: LCE(torch.tensor(1.0), w0, t0), ValueError, r"input must have a feature dimension"),
    (lambda: LCE(x0, "W", t0), TypeError, r"weight must be a torch.Tensor, got str"),
    (lambda: LCE(x0, w0, t0, class_weight=torch.ones(5)), ValueError,
     r"class_weight must be a 1-D tensor with one entry per class \(6\), got shape \(5,\)"),
    (lambda: LCE(x0, w0, t0, class_weight=torch.ones(6, requires_grad=True)), ValueError,
     r"class_weight requires grad, but the fused path gives gradients only for input, weight and bias"),
    (lambda: LCE(x0, w0, p0.clone().requires_grad_()), ValueError, r"target requires grad"),
    (lambda: LCE(x0, w0, t0, reduction="avg"), ValueError, r"reduction must be 'none', 'mean' or 'sum', got 'avg'"),
    (lambda: LCE(x0, w0, t0, reduction="sum", normalizer=4), ValueError,
     r"normalizer=4.0 replaces the denominator of reduction='mean', got reduction='sum'"),
    (lambda: LCE(x0, w0, t0, normalizer=0), ValueError, r"normalizer must be > 0 \(or None\), got 0.0"),
    (lambda: LCE(x0, w0, t0, normalizer=torch.ones(2)), ValueError, r"normalizer must be a number or a one-element tensor"),
    (lambda: LCE(x0, w0, t0, chunk_size=0), ValueError, r"chunk_size must be >= 1 \(rows per chunk\), got 0"),
    (lambda: LCE(x0, w0, t0, chunk_size=2.5), TypeError, r"chunk_size must be an int \(rows per chunk\) or None, got 2.5"),
    (lambda: LCE(x0, w0, t0, label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: LCE(x0, w0, t0, softcap=-1.0), ValueError, r"softcap must be > 0 \(or None\), got -1.0"),
    (lambda: LCE(x0, w0, t0, z_loss=-1), ValueError, r"z_loss must be >= 0, got -1.0"),
    (lambda: crossent.nn.LinearCrossEntropyLoss(reduction="avg")(x0, w0, t0), ValueError, r"got 'avg'"),
]


@pytest.mark.parametrize("route", ["fused", "auto"])  # auto: small problems try torch first
@pytest.mark.parametrize("call,exc,msg", ERRORS, ids=[f"error{i}" for i in range(len(ERRORS))])
def test_bad_inputs_raise_clear_errors(call, exc, msg, route):
    with _auto() if route == "auto" else crossent.use_backend("fused"):
        with pytest.raises(exc, match=msg):
            call()


# ----------------------------------------------------------------------------------------------
# Peak memory, measured in a fresh process per case.

_MEASURE = textwrap.dedent("""
    import json, resource, sys, torch, torch.nn.functional as F, crossent
    torch.manual_seed(0)
    n, d, v, case = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    t = torch.randint(0, v, (n,))
    fn = crossent.linear_cross_entropy if case == "fused" else (
        lambda h, w, t: crossent.cross_entropy(F.linear(h, w), t))
    def step():
        torch.autograd.grad(fn(h, w, t), (h, w))
    def rss_kb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    step()  # warm-up: allocator pools, first-touch of library code
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
        before = rss_kb("VmRSS")
        step()
        extra = rss_kb("VmHWM") - before
    except OSError:  # no resettable peak: ru_maxrss over the whole run, a looser upper bound
        before = rss_kb("VmRSS")
        step()
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"extra_bytes": extra * 1024}))
""")


def _peak_extra_bytes(cases, n, d, v):
    """Each case in its own fresh process (run side by side); case -> extra bytes."""
    procs = {case: subprocess.Popen([sys.executable, "-c", _MEASURE, str(n), str(d), str(v), case],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in cases}
    result = {}
    for case, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        result[case] = json.loads(out.strip().splitlines()[-1])["extra_bytes"]
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_below_a_bound_the_unfused_composition_exceeds():
    """N=2048, D=64, V=16384: the logits are 128 MiB. Fused: the gradients (4 MiB + 0.5 MiB) plus
    one 16 MiB chunk, so below 1/4 of the logits; the unfused composition needs the logits and
    their gradient, so above the logits' size."""
    n, d, v = 2048, 64, 16384
    logits = n * v * 4
    peaks = _peak_extra_bytes(["fused", "unfused"], n, d, v)
    fused, unfused_ = peaks["fused"], peaks["unfused"]
    bound = logits // 4
    assert fused < bound, f"fused peak {fused / 2**20:.0f} MiB >= bound {bound / 2**20:.0f} MiB"
    assert unfused_ > bound * 4, f"unfused peak {unfused_ / 2**20:.0f} MiB: the test measures nothing"


# ----------------------------------------------------------------------------------------------
# The composed route: small CPU problems run F.linear + cross_entropy (torch's kernels), where
# the fused loop's Python overhead would dominate (crossent._dispatch.LINEAR_TORCH_MAX_LOGITS).


COMPOSED = {"plain": {}, "smoothing": {"label_smoothing": 0.1}, "weight": {"class_weight": True},
            "ignore": {"ignore_index": 3}}
COMPOSED_CASES = [(name, soft) for name in COMPOSED for soft in (False, True)
                  if not (soft and name == "ignore")]  # ignore_index >= 0: class indices only


@pytest.mark.parametrize("backend", ["torch", None])  # forced, and chosen by the rule (auto)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,soft", COMPOSED_CASES)
def test_composed_route_matches_unfused(backend, reduction, name, soft):
    opts = COMPOSED[name]
    with crossent.use_backend(backend) if backend else _auto():
        for shape, v in [((13, 8), 37), ((2, 5, 8), 23)]:
            check_parity(shape, v, torch.float32, opts, reduction, soft=soft, bias=True)
        if reduction == "mean" and not soft:
            check_parity((13, 8), 37, torch.float32, opts, reduction, soft, True, normalizer=7.0)


class _auto:
    """No forced backend inside (undoes this module's autouse 'fused')."""

    def __enter__(self):
        from crossent import _dispatch

        self._saved, _dispatch._forced = _dispatch._forced, None

    def __exit__(self, *exc):
        from crossent import _dispatch

        _dispatch._forced = self._saved


def test_small_problems_take_the_composed_route_and_large_ones_the_fused(monkeypatch):
    from crossent import _dispatch
    from crossent.backends import torch_chunked_linear as backend

    calls = []
    real = backend.linear_cross_entropy
    monkeypatch.setattr(backend, "linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w, b, t = make((16, 8), 64)
    with _auto():
        LCE(x, w, t, b)
        assert calls == []  # 1024 logits: composed
        LCE(x, w, t, b, z_loss=1e-3)
        assert calls == [1]  # an option torch lacks: fused at any size
        monkeypatch.setattr(_dispatch, "LINEAR_TORCH_MAX_LOGITS", 1000)
        LCE(x, w, t, b)
        assert calls == [1, 1]  # above the threshold: fused
