"""The linear loss's weight-gradient cost: docs/PERFORMANCE.md's table is the one the code
computes (backends/triton/linear_cost.py), from the chunk rule and the split accumulator."""

from __future__ import annotations

from pathlib import Path

import torch

from crossent._options import LossOptions
from crossent.backends import triton
from crossent.backends.loops import linear_chunks, weight_grad
from crossent.backends.triton import linear_cost


def test_performance_doc_has_the_computed_weight_gradient_table():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "PERFORMANCE.md").read_text()
    assert linear_cost.weight_grad_table() in doc


def test_llama3_head_figures():
    v, d = 128256, 4096
    n = triton.chunk_rows(8192, d, v, torch.bfloat16, LossOptions())
    assert n == linear_chunks.MIN_FUSED_ROWS == 1024
    assert round(linear_cost.chunk_traffic(v, d, fused=False) / 1e9, 2) == 6.30
    assert round(linear_cost.chunk_traffic(v, d, fused=True) / 1e9, 2) == 4.20
    # the accumulating product stays compute-bound on an H200 at the chunk's rows
    assert linear_cost.intensity(n) > linear_cost.PEAK_FLOPS / linear_cost.PEAK_BYTES
    assert linear_cost.intensity(824) < linear_cost.PEAK_FLOPS / linear_cost.PEAK_BYTES < linear_cost.intensity(825)
    m = weight_grad.memory(v, d)
    assert m["finishing"] < 0.67 * m["finishing_to"] and m["held"] == 2 * v * d
