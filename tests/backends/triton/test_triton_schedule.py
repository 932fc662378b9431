"""The Triton backend's schedule arithmetic: the pass counts docs/PERFORMANCE.md states are the
ones the code computes, and the persistent grid's rule."""

from __future__ import annotations

from pathlib import Path

import torch

from crossent.backends.triton import ops, schedule


def test_performance_doc_has_the_computed_pass_table():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "PERFORMANCE.md").read_text()
    assert schedule.passes_table() in doc


def test_two_passes_when_grad_output_is_one():
    for c in (10, 1000, ops.SINGLE_BLOCK_MAX, 50257, 128256):
        for size in (2, 4):
            assert schedule.ce_passes(c, size) == (1, 1)
            assert schedule.ce_passes(c, size, grad_output_is_one=False) == (2, 2)
    assert schedule.ce_passes(1000, 2, dtype_is_f16=True) == (2, 2)


def test_long_rows_that_overflow_the_l2_are_read_twice():
    # 66 programs (half the SMs) of 1 MB rows exceed 75% of a 60 MB L2
    assert schedule.ce_passes(500_000, 2, device_facts_=(132, 60_000_000)) == (2, 1)


def test_persistent_grid_keeps_the_rows_in_flight_within_the_l2():
    cpu = torch.device("cpu")  # (modelled as an H200 under the interpreter)
    sms, l2 = schedule.device_facts(cpu)
    assert schedule.long_row_programs(8192, 128256 * 2, cpu) == sms  # bf16 Llama-3: every SM
    fp32 = schedule.long_row_programs(8192, 128256 * 4, cpu)
    assert fp32 * 128256 * 4 <= l2 * schedule.L2_SHARE and fp32 >= sms * schedule.MIN_SM_SHARE
    assert schedule.long_row_programs(3, 128256 * 2, cpu) == 3
