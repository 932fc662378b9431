"""Reduction 'none' of the fused linear loss keeps its last chunk from forward to backward
(backends/loops/linear_kept.py): what is recomputed, repeated backward, gradients."""

from __future__ import annotations

import pytest
import torch

import crossent
from conftest import assert_close
from crossent.backends.loops import linear_chunks
from linear_helpers import grad_output, make, unfused

LCE = crossent.linear_cross_entropy


@pytest.fixture(autouse=True)
def _fused_path():
    with crossent.use_backend(crossent.Backend.FUSED):
        yield


@pytest.mark.parametrize("chunk,kept", [(None, True), (4, True), (4, False)])
@pytest.mark.parametrize("want", [(True, True, True), (True, False, False), (False, True, False),
                                  (False, False, True)])
def test_none_keeps_its_last_chunk_for_backward(monkeypatch, chunk, kept, want):
    """reduction 'none' (float32, one head): forward leaves the last chunk's unscaled gradient in
    its buffer, backward takes that chunk's share from it and recomputes only the chunks before
    it; a repeated backward recomputes the last one too and gives the same bits. 16-bit inputs
    (``kept`` False: bfloat16) recompute every chunk. Gradients against the unfused composition,
    with a grad_output that has a zero and a negative entry."""
    dtype = torch.float32 if kept else torch.bfloat16
    x, w, b, t = make(13, 8, 37, dtype)
    calls = []
    real = linear_chunks.Chunk.logits
    monkeypatch.setattr(linear_chunks.Chunk, "logits", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    ours = [a.detach().clone().requires_grad_(flag) if a is not None else None for a, flag in zip((x, w, b), want)]
    loss = LCE(ours[0], ours[1], t, linear_bias=ours[2], reduction="none", chunk_size=chunk)
    chunks = 1 if chunk is None else 4
    assert len(calls) == chunks
    go = grad_output(loss)
    go[1], go[2] = 0.0, -1.5
    wanted = [a for a, flag in zip(ours, want) if flag]
    first = torch.autograd.grad(loss, wanted, go, retain_graph=True)
    assert len(calls) == chunks + (chunks - 1 if kept else chunks)
    again = torch.autograd.grad(loss, wanted, go)
    for a, c in zip(first, again):
        assert torch.equal(a, c)
    theirs = [a.detach().clone().requires_grad_(flag) if a is not None else None for a, flag in zip((x, w, b), want)]
    ref = unfused(theirs[0], theirs[1], t, theirs[2], reduction="none")
    expected = torch.autograd.grad(ref, [a for a, flag in zip(theirs, want) if flag], go)
    for a, e in zip(first, expected):
        if kept:
            assert_close(a, e)
        else:
            torch.testing.assert_close(a.float(), e.float(), atol=2e-2, rtol=2e-2)
