"""The fused linear cross-entropy kernel against the unfused composition it promises to equal.

Oracles, per case: crossent.cross_entropy(F.linear(...)) (every option), torch's
F.cross_entropy(F.linear(...)) (the options torch has), and float64 (16-bit: no worse than the
unfused 16-bit composition). Values and gradients w.r.t. input, linear_weight and linear_bias, with
a grad_output != 1; plain and K-dimensional heads. Then chunk sizes, the chunk-size rule and
autograd corner cases. (torch's own F.linear_cross_entropy: tests/test_linear_api.py; peak
memory: test_linear_memory.py; bad inputs: tests/test_checks.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent
from conftest import assert_close, assert_no_worse_than_torch
from crossent._options import LossOptions
from crossent.backends import chunked
from crossent.backends.loops import linear_chunks
from linear_helpers import (
    HARD,
    SOFT,
    TORCH_HAS,
    check_parity,
    grad_output,
    grads,
    leaves,
    make,
    resolve,
    unfused,
)

LCE = crossent.linear_cross_entropy


@pytest.fixture(autouse=True)
def _fused_path():
    """This module tests the fused kernel: small problems would otherwise take the composed
    F.linear + cross_entropy route (tests/test_dispatch.py)."""
    with crossent.use_backend(crossent.Backend.FUSED):
        yield


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", HARD.values(), ids=HARD.keys())
@pytest.mark.parametrize("n,d,v,heads,chunk", [
    (13, 8, 37, (), None),     # one chunk
    (13, 8, 37, (), 4),        # 4 chunks, the last one short
    (10, 8, 23, (3,), 3),      # K-dim: 3 heads, 4 chunks each
    (5, 6, 11, (2, 2), None),  # K-dim: 2 x 2 heads
])
def test_hard_targets_match_unfused(n, d, v, heads, chunk, opts, reduction):
    for bias in (True, False):
        check_parity(n, d, v, torch.float32, opts, reduction, soft=False, bias=bias, heads=heads,
                     chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", SOFT.values(), ids=SOFT.keys())
@pytest.mark.parametrize("n,d,v,heads,chunk", [
    (9, 6, 17, (), None), (9, 6, 17, (), 2), (6, 6, 11, (2,), 4),
])
def test_probability_targets_match_unfused(n, d, v, heads, chunk, opts, reduction):
    for bias in (True, False):
        check_parity(n, d, v, torch.float32, opts, reduction, soft=True, bias=bias, heads=heads,
                     chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_odd_large_vocabulary(reduction, soft):
    """V = 50257 (GPT-2's vocabulary: a prime times 29), small N and D; the default chunk size."""
    opts = {"label_smoothing": 0.1, "z_loss": 1e-4} if soft else {"weight": True, "label_smoothing": 0.1}
    check_parity(6, 4, 50257, torch.float32, opts, reduction, soft=soft, bias=True)


@pytest.mark.parametrize("opts", [{}, HARD["everything"]], ids=["plain", "everything"])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_float64_matches_unfused(opts, chunk):
    for reduction in ("mean", "none"):
        check_parity(11, 7, 19, torch.float64, opts, reduction, soft=False, bias=True, chunk_size=chunk)
    check_parity(11, 7, 19, torch.float64, opts, "mean", soft=False, bias=True, heads=(2,), chunk_size=chunk)


@pytest.mark.parametrize("normalizer", [7, 123.5, torch.tensor(40.0)])
@pytest.mark.parametrize("opts", [{}, HARD["everything"]], ids=["plain", "everything"])
def test_normalizer_divides_the_summed_loss(normalizer, opts):
    n = normalizer.item() if isinstance(normalizer, torch.Tensor) else normalizer
    check_parity(10, 6, 13, torch.float32, opts, "mean", soft=False, bias=True, chunk_size=3,
                 normalizer=normalizer)
    x, w, b, t = make(10, 6, 13)
    total = LCE(x, w, t, linear_bias=b, reduction="sum")
    assert_close(LCE(x, w, t, linear_bias=b, normalizer=normalizer), total / n)


def test_normalizer_with_probability_targets():
    check_parity(8, 5, 9, torch.float32, {}, "mean", soft=True, bias=False, normalizer=3.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_targets_ignored(reduction):
    """'mean' is 0/0 = nan as in torch; every gradient is exactly zero."""
    x, w, b, _ = make(5, 4, 7)
    t = torch.full((5,), -100)
    xa, wa, ba = leaves(x, w, b)
    ours = LCE(xa, wa, t, linear_bias=ba, reduction=reduction)
    theirs = F.cross_entropy(F.linear(x, w, b), t, reduction=reduction)
    assert_close(ours, theirs)
    for g in torch.autograd.grad(ours.sum(), (xa, wa, ba)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_unbatched_and_empty_inputs(reduction, soft):
    """input (D,) with target () or (V,); input (0, D) with target (0,) or (0, V): as F.linear +
    cross_entropy."""
    cases = [make(1, 5, 9, ignored=0, soft=soft, unbatched=True), make(0, 5, 9, soft=soft)]
    for x, w, b, t in cases:
        xa, wa, ba = leaves(x, w, b)
        xr, wr, br = leaves(x, w, b)
        ours = LCE(xa, wa, t, linear_bias=ba, reduction=reduction)
        theirs = F.cross_entropy(F.linear(xr, wr, br), t, reduction=reduction)
        assert ours.shape == theirs.shape
        assert_close(ours, theirs)
        for g, r in zip(torch.autograd.grad(ours.sum(), (xa, wa, ba)), torch.autograd.grad(theirs.sum(), (xr, wr, br))):
            assert_close(g, r)


# ----------------------------------------------------------------------------------------------
# 16-bit: tiny shapes (bfloat16 products are ~500x slower than float32 on CPU).


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [
    ("hard", {}), ("hard", HARD["everything"]), ("soft", SOFT["smoothing+weight"]),
], ids=["hard", "hard-everything", "soft-smoothing-weights"])
def test_16bit_no_worse_than_unfused(dtype, reduction, case):
    kind, opts = case
    soft = kind == "soft"
    x64, w64, b64, t64 = make(10, 8, 29, torch.float64, soft=soft, seed=5)
    t16 = t64.to(dtype) if soft else t64
    kw = dict(resolve(opts, 29, dtype), reduction=reduction)
    kw64 = {k: (val.double() if k == "weight" else val) for k, val in kw.items()}
    xa, wa, ba = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    ours = LCE(xa, wa, t16, linear_bias=ba, chunk_size=4, **kw)
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
    x, w, b, t = make(4096, 4, 5, torch.float16, ignored=0)
    scale = torch.tensor(1024.0, dtype=torch.float16)
    xa, wa, ba = leaves(x, w, b)
    g = torch.autograd.grad(LCE(xa, wa, t, linear_bias=ba, chunk_size=1000), (xa, wa, ba), scale)
    xt, wt, bt = leaves(x, w, b)
    g_t = torch.autograd.grad(unfused(xt, wt, t, bt, ce=F.cross_entropy), (xt, wt, bt), scale)
    xr, wr, br = leaves(x.double(), w.double(), b.double())
    r = torch.autograd.grad(unfused(xr, wr, t, br), (xr, wr, br), scale.double())
    for a, th, ref in zip(g, g_t, r):
        assert_no_worse_than_torch(a, th, ref, torch.float16)


# ----------------------------------------------------------------------------------------------
# Chunk size, autograd behaviour.


def test_chunk_size_rule():
    opts = LossOptions()
    rows = chunked.chunk_rows
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
        m = linear_chunks.ROW_MULTIPLE
        assert r == n or r < m or r % m == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_any_chunk_size_gives_the_same_result(chunk):
    x, w, b, t = make(7, 5, 11)
    base = LCE(x, w, t, linear_bias=b, chunk_size=None, reduction="none")
    assert_close(LCE(x, w, t, linear_bias=b, chunk_size=chunk, reduction="none"), base)


def test_frozen_operands_get_no_gradient():
    """Only what requires grad is differentiated: a frozen weight (or input) costs no product."""
    x, w, b, t = make(6, 4, 9)
    xa = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(LCE(xa, w, t, linear_bias=b), (xa,))
    xr = x.clone().requires_grad_()
    assert_close(gx, torch.autograd.grad(unfused(xr, w, t, b), (xr,))[0])
    wa = w.clone().requires_grad_()
    (gw,) = torch.autograd.grad(LCE(x, wa, t, linear_bias=b, reduction="none").sum(), (wa,))
    wr = w.clone().requires_grad_()
    assert_close(gw, torch.autograd.grad(unfused(x, wr, t, b, reduction="none").sum(), (wr,))[0])


def test_no_grad_gives_the_same_loss_and_no_graph():
    x, w, b, t = make(6, 4, 9)
    xa, wa, ba = leaves(x, w, b)
    with_graph = LCE(xa, wa, t, linear_bias=ba, label_smoothing=0.1)
    with torch.no_grad():
        without = LCE(xa, wa, t, linear_bias=ba, label_smoothing=0.1)
    assert without.grad_fn is None and with_graph.grad_fn is not None
    assert torch.equal(with_graph.detach(), without)


def test_inputs_are_not_modified():
    x, w, b, t = make(6, 4, 9)
    xa, wa, ba = leaves(x, w, b)
    versions = [a._version for a in (xa, wa, ba)]
    LCE(xa, wa, t, linear_bias=ba, softcap=2.0).backward()
    assert [a._version for a in (xa, wa, ba)] == versions
    assert torch.equal(xa.detach(), x) and torch.equal(wa.detach(), w) and torch.equal(ba.detach(), b)


def test_backward_twice():
    """'none' recomputes from saved inputs; scalar losses hand their precomputed gradients over
    once and recompute them (through the composite formulas) for a second backward."""
    x, w, b, t = make(6, 4, 9)
    xa, wa, ba = leaves(x, w, b)
    loss = LCE(xa, wa, t, linear_bias=ba, reduction="none")
    first = torch.autograd.grad(loss.sum(), (xa, wa, ba), retain_graph=True)
    second = torch.autograd.grad(loss.sum(), (xa, wa, ba))
    for a, c in zip(first, second):
        assert torch.equal(a, c)
    loss = LCE(xa, wa, t, linear_bias=ba)
    first = torch.autograd.grad(loss, (xa, wa, ba), retain_graph=True)
    second = torch.autograd.grad(loss, (xa, wa, ba))
    for a, c in zip(first, second):
        assert_close(c, a)


class _Options:
    """The fields of torch 2.13's LinearCrossEntropyOptions (duck-typed: any torch version)."""

    def __init__(self, allow_retain_graph=False, batch_chunk_size=None, chunking_method="auto",
                 acc_policy="auto", acc_dtype=None):
        self.allow_retain_graph, self.batch_chunk_size = allow_retain_graph, batch_chunk_size
        self.chunking_method, self.acc_policy, self.acc_dtype = chunking_method, acc_policy, acc_dtype


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_allow_retain_graph_keeps_the_gradients_for_a_second_backward(reduction):
    x, w, b, t = make(6, 4, 9)
    xa, wa, ba = leaves(x, w, b)
    loss = LCE(xa, wa, t, linear_bias=ba, reduction=reduction, options=_Options(allow_retain_graph=True))
    go = torch.tensor(0.5)
    first = torch.autograd.grad(loss, (xa, wa, ba), go, retain_graph=True)
    second = torch.autograd.grad(loss, (xa, wa, ba), go * 4, retain_graph=True)
    third = torch.autograd.grad(loss, (xa, wa, ba))
    xr, wr, br = leaves(x, w, b)
    expected = torch.autograd.grad(unfused(xr, wr, t, br, reduction=reduction), (xr, wr, br))
    for a, c, e, r in zip(first, second, third, expected):
        assert_close(a * 2, e)
        assert_close(c, e * 2)
        assert_close(e, r)


@pytest.mark.parametrize("fields,rows", [
    (dict(), None),                                            # "auto": crossent's own rule
    (dict(batch_chunk_size=3), 3),
    (dict(chunking_method=None), 40),                          # torch: one chunk of every row
    (dict(chunking_method=None, batch_chunk_size=7), 7),
    (dict(chunking_method="aspect_ratio"), 4),                 # next_pow2(ceil(40 / ceil(100 / 8)))
    (dict(chunking_method="aspect_ratio:2"), 2),
])
def test_options_choose_the_chunk_size_as_torch_does(fields, rows, monkeypatch):
    seen = []
    real = linear_chunks.chunk_loop
    monkeypatch.setattr(linear_chunks, "chunk_loop", lambda *a, **k: seen.append(a[5]) or real(*a, **k))
    x, w, b, t = make(40, 8, 100)
    loss = LCE(x, w, t, linear_bias=b, options=_Options(**fields))
    assert_close(loss, unfused(x, w, t, b))
    expected = rows if rows is not None else chunked.chunk_rows(40, 8, 100, torch.float32, LossOptions())
    assert seen == [expected]


def test_reference_backend_computes_the_contract_and_class_weight_gradients():
    """The reference backend gives the gradients torch gives: the class weight of probability
    targets; for class indices torch refuses a class weight that requires grad, and so does it."""
    x, w, b, t = make(6, 4, 9, soft=True)
    cw = torch.rand(9) + 0.5
    kw = dict(label_smoothing=0.1, z_loss=1e-3, normalizer=4.0)
    with crossent.use_backend(crossent.Backend.REFERENCE):
        cwa = cw.clone().requires_grad_()
        ref = LCE(x, w, t, linear_bias=b, weight=cwa, **kw)
        (gcw,) = torch.autograd.grad(ref, (cwa,))
    assert_close(ref, LCE(x, w, t, linear_bias=b, weight=cw, **kw))
    cwr = cw.double().requires_grad_()
    expected = unfused(x.double(), w.double(), t.double(), b.double(), weight=cwr, **kw,
                       ce=crossent.reference.cross_entropy)
    assert_close(gcw, torch.autograd.grad(expected, (cwr,))[0].float())
    _, _, _, index = make(6, 4, 9)
    with crossent.use_backend(crossent.Backend.REFERENCE), pytest.raises(RuntimeError, match="torch does not differentiate"):
        LCE(x, w, index, linear_bias=b, weight=cw.clone().requires_grad_())


@pytest.mark.parametrize("heads", [(), (3,)])
def test_16bit_weight_gradient_accumulated_inside_the_product(monkeypatch, heads):
    """Where torch multiplies 16-bit operands into a float32 result (CUDA: addmm's out_dtype),
    grad_W accumulates inside that product: written by the first chunk's, added to by the later
    ones', no 16-bit slice in between -- one product per row block of the accumulator (two:
    weight_grad.SplitWeightGrad). torch's op runs on CUDA only, so it is emulated here by
    the same arithmetic (16-bit operands, float32 result); the gradients are no worse than the
    unfused bfloat16 composition's."""
    calls = []

    def product(gw, g_t, xc, first):
        calls.append(first)
        p = g_t.float() @ xc.float()
        gw.copy_(p) if first else gw.add_(p)

    monkeypatch.setattr(linear_chunks, "float32_products", lambda device, dtype: True)
    monkeypatch.setattr(linear_chunks, "weight_grad_product", product)
    dtype = torch.bfloat16
    x64, w64, b64, t = make(13, 8, 37, torch.float64, heads=heads, seed=3)
    xa, wa, ba = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    ours = LCE(xa, wa, t, linear_bias=ba, chunk_size=4)
    assert calls == ([True, True] + [False, False] * 3) * max(1, len(heads) and heads[0])
    xt, wt, bt = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    theirs = unfused(xt, wt, t, bt, ce=F.cross_entropy)
    xr, wr, br = leaves(xa.detach().double(), wa.detach().double(), ba.detach().double())
    ref = unfused(xr, wr, t, br)
    go = torch.tensor(0.7, dtype=torch.float64)
    for a, th, r in zip(grads(ours, (xa, wa, ba), go.to(dtype)), grads(theirs, (xt, wt, bt), go.to(dtype)),
                        grads(ref, (xr, wr, br), go)):
        assert a.dtype == dtype
        assert_no_worse_than_torch(a, th, r, dtype)
