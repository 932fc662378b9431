"""The fused CPU backend's tokens per chunk of linear_log_probs: the linear loss's memory rule,
floored at LP_MIN_ROWS tokens while those fit in LP_FLOOR_BYTES (small heads ran ~2.2x slower in
64-token chunks: chunked/__init__.py has the measurement)."""

from __future__ import annotations

import pytest
import torch

from crossent._options import LossOptions
from crossent.backends import chunked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize("n,d,v", [(2048, 128, 32768), (512, 512, 32768), (4096, 1024, 128256),
                                   (4096, 64, 256000), (100, 128, 32768), (7, 5, 10), (0, 8, 100)])
def test_linear_rows_floor(n, d, v, dtype, extra):
    """log_prob_rows (this backend's rule, with 0-1 extra buffers, and the vocab-parallel one's,
    with 1-2: crossent.distributed.log_probs counts one more)."""
    opts = LossOptions()
    rule = chunked.chunk_rows(n, d, v, dtype, opts, extra_buffers=extra)
    rows = chunked.log_prob_rows(n, d, v, dtype, opts, extra_buffers=extra)
    if extra < 2:
        assert chunked._lp_linear_rows(n, d, v, dtype, opts, bool(extra)) == rows
    assert rows >= rule  # never fewer than the memory rule gives
    fit = chunked.chunk_rows(n, d, v, dtype, opts, budget_bytes=chunked.LP_FLOOR_BYTES, extra_buffers=extra)
    if rule >= min(n, chunked.LP_MIN_ROWS):
        assert rows == rule  # large heads: the rule unchanged
    else:
        assert rows <= max(rule, fit)  # the floor never exceeds its byte cap
        assert rows >= min(max(n, 1), chunked.LP_MIN_ROWS, fit)


def test_small_head_gets_the_floor():
    assert chunked._lp_linear_rows(2048, 128, 32768, torch.float32, LossOptions(), True) == chunked.LP_MIN_ROWS


def test_linear_cross_entropy_keeps_its_memory_budget(monkeypatch):
    """linear_cross_entropy's chunks keep chunk_rows' 16 MiB budget, not the log-probs' floor: a
    small head (D=8, V=20000) runs 176-token chunks. (The floor was faster there, 1.18-2.12x at
    D=64-256, but a patched Llama step with 512 tokens and V=32000 then held a 32 MiB chunk, and
    its peak rose above half the logits: tests/integrations/test_hf_transformers.py.) The loss
    and gradients are those of any other chunking."""
    import crossent
    from crossent.backends.loops import linear_chunks

    assert chunked.KERNELS.chunk_rows is chunked.chunk_rows
    n, d, v = 512, 8, 20000
    assert chunked.chunk_rows(n, d, v, torch.float32, LossOptions()) == 176
    assert chunked.floored_rows(n, d, v, torch.float32, LossOptions()) == 256
    seen, real = [], linear_chunks.chunk_loop
    monkeypatch.setattr(linear_chunks, "chunk_loop", lambda *a, **k: seen.append(a[5]) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(n, d, generator=g, requires_grad=True), torch.randn(v, d, generator=g, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    with crossent.use_backend("fused"):
        loss = crossent.linear_cross_entropy(x, w, t)
        other = crossent.linear_cross_entropy(x, w, t, chunk_size=100)
    assert seen == [176, 100]
    grads = torch.autograd.grad(loss, (x, w)), torch.autograd.grad(other, (x, w))
    torch.testing.assert_close(loss, other)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
