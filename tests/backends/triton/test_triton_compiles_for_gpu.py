"""The Triton kernels compile for an H100/H200 (sm_90) without spilling registers, checked on any
machine: aot_compile.py runs crossent's own launchers on CPU tensors through Triton's launch path
(its argument binding and specialization, then its compiler and ptxas; nothing is launched), in a
process without TRITON_INTERPRET (the interpreter accepts programs the GPU compiler rejects)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import skip_without_triton

skip_without_triton()


def _compile_check(*args, script="aot_compile.py"):
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), *args],
                         capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_kernels_compile_for_sm90_without_spills():
    sys.path.insert(0, str(Path(__file__).parent))
    import aot_compile

    rows = _compile_check()
    assert {r["variant"] for r in rows} == set(aot_compile.launched())
    assert {r["kernel"] for r in rows} == {"ce_kernel", "ce_grad_kernel", "bce_kernel", "scale_kernel"}
    spilled = {r["variant"]: r["spill_bytes"] for r in rows if r["spill_bytes"]}
    assert not spilled, f"register spills on sm_90: {spilled}"
    # bound as on a GPU: small integers as int32 (Triton's specialization), pointers typed by dtype
    ce = next(r for r in rows if r["variant"] == "ce bf16 C=50257 every option")
    assert ce["types"]["C"] == "i32" and ce["types"]["x_ptr"] == "*bf16" and ce["types"]["loss_ptr"] == "*fp32"
    # 16-byte loads and stores of the logits and the gradient at class counts whose rows are not
    # 16-byte aligned (one block: ld/st.global.v4; the loop: cp.async.cg + st.global.v4)
    for dt in ("bf16", "f16", "f32", "f64"):
        for c in (1000, 50257):
            r = next(r for r in rows if r["variant"] == f"ce {dt} C={c} every option")
            assert r["vector_16B"] >= 2, r


def test_distillation_kernels_compile_for_sm90_without_spills():
    """(They had never compiled for a GPU: the interpreter accepted a plain float global and a
    loop-carried variable changing type, which the GPU compiler rejects.)"""
    sys.path.insert(0, str(Path(__file__).parent))
    import aot_compile_distill

    rows = _compile_check(script="aot_compile_distill.py")
    assert {r["variant"] for r in rows} == set(aot_compile_distill.VARIANTS)
    assert {r["kernel"] for r in rows} == {"distill_kernel", "topk_kernel"}
    spilled = {r["variant"]: r["spill_bytes"] for r in rows if r["spill_bytes"]}
    assert not spilled, f"register spills on sm_90: {spilled}"
