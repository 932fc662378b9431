"""Log-probabilities and entropy on the Triton kernels (through the interpreter on a CPU): rows
of several blocks (the online rebasing), -inf blocks before the first finite logit, gradcheck,
16-bit chunks written in place, and the sm_90 compile check. (The parity grid over temperature,
softcap, bias, ignored rows and leading dims runs on Triton too: tests/test_log_probs.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crossent
from conftest import assert_close, skip_without_triton

skip_without_triton()


@pytest.fixture
def small_lp_blocks(monkeypatch):
    """Rows of more than 16 classes take several blocks."""
    from crossent.backends.triton import ops_log_probs

    monkeypatch.setattr(ops_log_probs, "LP_BLOCK", 16)


def _against_reference(z, t, **kw):
    out = {}
    for backend in ("triton", "reference"):
        zz = z.detach().clone().requires_grad_()
        with crossent.use_backend(backend):
            lp, h = crossent.log_probs(zz, t, return_entropy=True, **kw)
        g, = torch.autograd.grad((lp * 1.5 - 0.7 * h).sum(), zz)
        out[backend] = (lp, h, g)
    for a, b in zip(out["triton"], out["reference"]):
        assert_close(a, b)


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.6, "softcap": 4.0}], ids=["plain", "T-softcap"])
def test_multi_block_rows_and_masked_blocks(small_lp_blocks, kw):
    """45 classes in blocks of 16; the first block of row 0 all -inf (its rescaling must not be
    exp(-inf + inf)); a large common offset (1e4) in row 1 costs no precision."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 45, generator=gen) * 3
    z[0, :20] = float("-inf")
    z[1] += 1e4
    t = torch.tensor([30, 2, -100, 44])
    _against_reference(z, t, **kw)


def test_a_row_of_minus_inf_is_nan_as_torch():
    z = torch.full((2, 9), float("-inf"))
    z[1, 3] = 0.0
    with crossent.use_backend("triton"):
        lp, h = crossent.log_probs(z, torch.tensor([1, 3]), return_entropy=True)
    assert torch.isnan(lp[0]) and torch.isnan(h[0])
    assert lp[1] == 0.0 and h[1] == 0.0


def test_gradcheck(small_lp_blocks):
    """fast_mode (random projections: a few evaluations; each launch costs the interpreter ~0.1 s)."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 20, generator=gen, dtype=torch.float64).requires_grad_()
    t = torch.tensor([4, -100, 19])
    with crossent.use_backend("triton"):
        fn = lambda z: crossent.log_probs(z, t, temperature=0.8, softcap=3.0, return_entropy=True)
        assert torch.autograd.gradcheck(fn, (z,), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_linear_chunks_match_the_fused_backend(dtype, small_lp_blocks):
    """The 16-bit logits chunk receives its gradient in place (computed in float32); the same
    arithmetic as the torch-op kernels, so both backends agree to 16-bit rounding."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 8, generator=gen).to(dtype)
    w = (torch.randn(40, 8, generator=gen) * 0.5).to(dtype)
    t = torch.randint(0, 40, (9,), generator=gen)
    t[4] = -100
    res = {}
    for backend in ("triton", "fused"):
        ps = [p.clone().requires_grad_() for p in (x, w)]
        with crossent.use_backend(backend):
            lp, h = crossent.linear_log_probs(*ps, t, return_entropy=True, chunk_size=4, temperature=0.9)
        res[backend] = (lp, h, *torch.autograd.grad((lp - h).sum(), ps))
    for a, b in zip(res["triton"], res["fused"]):
        assert a.dtype == b.dtype
        assert_close(a.float(), b.float(), dtype)


def test_log_floor_is_the_row_math_s():
    from crossent.backends import rows_log_probs
    from crossent.backends.triton import kernels_log_probs

    assert kernels_log_probs.LOG_FLOOR.value == rows_log_probs.LOG_FLOOR


def test_kernels_compile_for_sm90_without_spills():
    here = Path(__file__).resolve()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[3] / "src"), str(here.parent), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(here.with_name("aot_compile_log_probs.py"))],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    spilled = {r["variant"]: r["spill_bytes"] for r in rows if r["spill_bytes"]}
    assert not spilled, f"register spills on sm_90: {spilled}"
