"""The 16-bit weight gradient of the linear loss finished inside its own storage
(backends/loops/weight_grad.py): bit for bit what one float32 accumulator cast by ``.to()`` gives,
never more than 4 V D bytes alive (the float32 accumulator and its 16-bit copy were 6 V D)."""

from __future__ import annotations

import sys

import pytest
import torch
from memory_probe import peak_extra_bytes

import crossent
from crossent.backends.loops import linear as linear_mod
from crossent.backends.loops import weight_grad
from linear_helpers import leaves, make


def _filled(shape, dtype, seed=0):
    """A SplitWeightGrad with random float32 values in its blocks, and those values as one tensor."""
    split = weight_grad.SplitWeightGrad(shape, dtype, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    full = torch.randn(shape, generator=gen, dtype=torch.float32) * 3
    full.view(-1)[::7] = torch.finfo(torch.float32).tiny  # (subnormal once rounded to 16 bits)
    for v0, v1, t in split.blocks:
        t.copy_(full[v0:v1])
    return split, full


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (37, 11), (64, 40), (9, 3, 7)])
@pytest.mark.parametrize("first_block", [1, 3, 1 << 20])
def test_finish_is_the_cast_bit_for_bit_in_the_results_own_storage(monkeypatch, dtype, shape, first_block):
    """Every block size, odd and even V, K-dim (V, P, D) weights: finish() is full.to(dtype)
    exactly, and the returned tensor is the storage the head block lived in (nothing copied out)."""
    monkeypatch.setattr(weight_grad, "FIRST_BLOCK", first_block)
    split, full = _filled(shape, dtype)
    head = split.blocks[0][2]
    out = split.finish()
    assert out.dtype == dtype and out.shape == shape and out.is_contiguous()
    assert out.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
    assert torch.equal(out.view(torch.int16), full.to(dtype).view(torch.int16))


def test_finish_of_copies_leaves_the_blocks_for_a_second_backward():
    """A gradient kept for a second backward (allow_retain_graph) is finished from scaled copies
    into a fresh tensor; the blocks keep their float32 values."""
    split, full = _filled((10, 6), torch.bfloat16)
    copies = tuple(t * 2 for t in split.tensors())
    out = split.finish(copies)
    assert torch.equal(out, (full * 2).to(torch.bfloat16))
    assert torch.equal(torch.cat(split.tensors()), full)


@pytest.mark.parametrize("v,d", [(128256, 4096), (50257, 768), (7, 3), (1, 1)])
def test_memory_arithmetic_is_the_storage_allocated(v, d):
    """weight_grad.memory() -- docs/PERFORMANCE.md's figures -- counts the bytes the class holds."""
    m = weight_grad.memory(v, d)
    if v * d < 1 << 22:
        split = weight_grad.SplitWeightGrad((v, d), torch.bfloat16, torch.float32, torch.device("cpu"))
        tail = split.blocks[1][2]
        assert m["accumulating"] == split.result.untyped_storage().nbytes() + tail.untyped_storage().nbytes()
        assert m["held"] == split.result.untyped_storage().nbytes()
    assert m["accumulating"] == 4 * v * d - 4 * (v // 2) * d + 2 * v * d
    assert m["finishing_to"] == 6 * v * d
    if v == 128256:  # the Llama-3 head: 3.15 GB before, 2.10 GB (+ 2 MiB) now, 1.05 GB held
        assert round(m["finishing_to"] / 1e9, 2) == 3.15
        assert round(m["finishing"] / 1e9, 2) == 2.10 and round(m["held"] / 1e9, 2) == 1.05


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("heads", [(), (3,)])
def test_linear_loss_gradients_bit_for_bit_as_one_accumulator(monkeypatch, reduction, heads):
    """The split accumulator (products cut at row V//2, finished in place) gives the gradients
    the single float32 accumulator cast by .to() gave, bit for bit (CPU backend, bfloat16)."""
    x64, w64, b64, t = make(13, 8, 37, torch.float64, heads=heads, seed=4)
    dtype = torch.bfloat16
    out = {}
    for split in (True, False):
        if not split:
            monkeypatch.setattr(linear_mod, "narrows", lambda *a: False)
        xa, wa, ba = leaves(x64.to(dtype), w64.to(dtype), b64.to(dtype))
        loss = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, chunk_size=4, reduction=reduction,
                                             label_smoothing=0.1)
        go = torch.full_like(loss, 0.7)
        out[split] = (loss,) + torch.autograd.grad(loss, (xa, wa, ba), go)
    for a, b in zip(out[True], out[False]):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_retain_graph_backwards_agree():
    """Twice backward through one graph (the first hands the split over; the second recomputes
    it) and with allow_retain_graph (finished from copies): the same bits each time."""
    x64, w64, b64, t = make(9, 6, 21, torch.float64, seed=2)
    for keep in (False, True):
        xa, wa, ba = leaves(x64.bfloat16(), w64.bfloat16(), b64.bfloat16())
        options = crossent.nn.LinearCrossEntropyOptions(allow_retain_graph=keep, batch_chunk_size=4)
        loss = crossent.linear_cross_entropy(xa, wa, t, linear_bias=ba, options=options)
        first = torch.autograd.grad(loss, (wa,), retain_graph=True)[0]
        second = torch.autograd.grad(loss, (wa,))[0]
        assert torch.equal(first, second) and first.dtype == torch.bfloat16


_FINISH = """
    import sys, torch
    from crossent.backends.loops import weight_grad
    v, d, case = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    def step():
        if case == "split":
            g = weight_grad.SplitWeightGrad((v, d), torch.bfloat16, torch.float32, torch.device("cpu"))
            for _, _, t in g.blocks:
                t.fill_(1.5)
            out = g.finish()
        else:
            acc = torch.empty((v, d), dtype=torch.float32).fill_(1.5)
            out = acc.to(torch.bfloat16)
        assert out.dtype == torch.bfloat16
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_finishing_peak_is_the_accumulator_alone():
    """Measured (peak resident set of a fresh process, V=16384, D=2048: 128 MiB float32): the
    split accumulator's fill and finish peak at its 128 MiB (+ the 2 MiB first block), the single
    accumulator cast by .to() at 192 MiB; both within 16 MiB of weight_grad.memory()."""
    v, d = 16384, 2048
    peaks = peak_extra_bytes(_FINISH, ["split", "to"], v, d)
    m = weight_grad.memory(v, d)
    slack = 16 << 20
    assert abs(peaks["split"] - m["finishing"]) < slack, (peaks, m)
    assert abs(peaks["to"] - m["finishing_to"]) < slack, (peaks, m)
    assert peaks["split"] < 0.75 * peaks["to"]
