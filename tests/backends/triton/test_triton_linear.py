"""Linear cross-entropy on the Triton kernels (the fused chunk loop, its CE step in Triton, the
logits row-major and the 16-bit gradient written in place) against the unfused composition."""

from __future__ import annotations

import pytest
import torch

import crossent
from conftest import assert_no_worse_than_torch, skip_without_triton
from crossent.backends.loops import linear_chunks
from linear_helpers import HARD, SOFT, check_parity, grad_output, grads, leaves, make, unfused

skip_without_triton()


@pytest.fixture(autouse=True)
def _triton_path():
    with crossent.use_backend(crossent.Backend.TRITON):
        yield


@pytest.mark.parametrize("opts", [HARD[k] for k in ("plain", "weight", "smoothing+weight", "everything")],
                         ids=["plain", "weight", "smoothing+weight", "everything"])
@pytest.mark.parametrize("n,d,v,heads,chunk,reduction", [
    (13, 8, 37, (), None, "mean"),   # one chunk
    (13, 8, 37, (), 4, "sum"),       # 4 chunks, the last one short
    (10, 8, 23, (3,), 3, "none"),    # K-dim heads; 'none' recomputes in backward
])
def test_hard_targets_match_unfused(n, d, v, heads, chunk, reduction, opts):
    check_parity(n, d, v, torch.float32, opts, reduction, soft=False, bias=True, heads=heads,
                 chunk_size=chunk)


@pytest.mark.parametrize("opts", SOFT.values(), ids=SOFT.keys())
def test_probability_targets_match_unfused(opts):
    check_parity(9, 6, 17, torch.float32, opts, "mean", soft=True, bias=True, chunk_size=4)
    check_parity(9, 6, 17, torch.float32, opts, "none", soft=True, bias=False)


def test_float64_and_the_two_pass_loop(small_blocks):
    check_parity(11, 7, 45, torch.float64, HARD["everything"], "mean", soft=False, bias=True, chunk_size=5)
    check_parity(11, 7, 45, torch.float64, SOFT["z_loss+softcap"], "sum", soft=True, bias=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_16bit_no_worse_than_unfused(dtype, reduction, monkeypatch):
    """The 16-bit gradient is computed in float32 and rounded once, in place over the logits;
    grad_W accumulates in float32 over chunks, its 16-bit product added in vocabulary slices."""
    from dataclasses import replace

    from crossent.backends import triton

    monkeypatch.setattr(triton, "KERNELS", replace(triton.KERNELS, weight_grad_slice=8))  # 29 classes: four slices
    x64, w64, b64, t = make(10, 8, 29, torch.float64, seed=5)
    kw = dict(HARD["smoothing"], reduction=reduction)
    xa, wa, ba = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    ours = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, chunk_size=4, **kw)
    xt, wt, bt = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
    theirs = unfused(xt, wt, t, bt, ce=torch.nn.functional.cross_entropy, **kw)
    xr, wr, br = leaves(xa.detach().double(), wa.detach().double(), ba.detach().double())
    ref = unfused(xr, wr, t, br, **kw)
    assert ours.dtype == theirs.dtype
    assert_no_worse_than_torch(ours, theirs, ref, dtype)
    go = grad_output(ref)
    for g, g_t, g_r in zip(grads(ours, (xa, wa, ba), go.to(dtype)), grads(theirs, (xt, wt, bt), go.to(dtype)),
                           grads(ref, (xr, wr, br), go)):
        assert g.dtype == dtype
        assert_no_worse_than_torch(g, g_t, g_r, dtype)


def test_chunk_rows_with_lean_kernels():
    """Triton's CE keeps its temporaries in registers: a chunk is its logits alone, budgeted at a
    quarter of the 16-bit weight gradient (Llama-3 head: 1024 rows, 256 MiB), options or not; a
    16-bit chunk has at least MIN_FUSED_ROWS rows (grad_W's float32 accumulation inside the
    product stays compute-bound: Gemma-2's head gets 1024 rows, not the budget's 576)."""
    from crossent._options import LossOptions
    from crossent.backends import triton

    for opts in (LossOptions(), LossOptions(softcap=30.0, label_smoothing=0.1)):
        assert triton.chunk_rows(8192, 4096, 128256, torch.bfloat16, opts) == 1024
    assert triton.chunk_rows(8192, 2304, 256000, torch.bfloat16, LossOptions(softcap=30.0)) == 1024
    assert triton.chunk_rows(500, 2304, 256000, torch.bfloat16, LossOptions()) == 500
    rows = triton.chunk_rows(8192, 2304, 256000, torch.float32, LossOptions())
    assert rows * 256000 * 4 <= 256000 * 2304 * 4 // 4 and rows % linear_chunks.ROW_MULTIPLE == 0


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_neg_inf_bias_masks_a_class_as_torch(eps):
    """A -inf bias forbids a class: torch's values and gradients (inf under smoothing) on the
    Triton chunk loop too."""
    x, w, b, t = make(12, 5, 9, seed=11)
    b[3] = float("-inf")
    t[t == 3] = 4
    xa, wa, ba = leaves(x, w, b)
    xt, wt, bt = leaves(x, w, b)
    ours = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, label_smoothing=eps, chunk_size=5)
    theirs = torch.nn.functional.cross_entropy(torch.nn.functional.linear(xt, wt, bt), t, label_smoothing=eps)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    for u, v in zip(torch.autograd.grad(ours, (xa, wa, ba)), torch.autograd.grad(theirs, (xt, wt, bt))):
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_16bit_weight_gradient_bit_for_bit_as_one_accumulator(monkeypatch, reduction):
    """The float32 accumulator in two row blocks finished inside the result's storage
    (loops/weight_grad.py) gives the bits one accumulator cast by .to() gave, on the Triton chunk
    loop (row-major logits: the blocks' products read strided column slices of G)."""
    from crossent.backends.loops import linear as linear_mod

    x64, w64, b64, t = make(12, 8, 29, torch.float64, seed=6)
    out = {}
    for split in (True, False):
        if not split:
            monkeypatch.setattr(linear_mod, "narrows", lambda *a: False)
        xa, wa, ba = leaves(x64.bfloat16(), w64.bfloat16(), b64.bfloat16())
        loss = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, chunk_size=5, reduction=reduction,
                                             z_loss=1e-3)
        out[split] = (loss,) + torch.autograd.grad(loss, (xa, wa, ba), torch.full_like(loss, 0.6))
    for a, b in zip(out[True], out[False]):
        assert a.dtype == b.dtype and torch.equal(a, b)
