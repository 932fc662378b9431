"""The Triton kernels compile for an H100/H200 (sm_90) without spilling registers, checked on any
machine: aot_compile.py runs Triton's compiler and its ptxas ahead of time, in a process without
TRITON_INTERPRET (the interpreter accepts programs the GPU compiler rejects)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import skip_without_triton

skip_without_triton()


def test_kernels_compile_for_sm90_without_spills():
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("aot_compile.py"))],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) >= 8
    spilled = {r["variant"]: r["spill_bytes"] for r in rows if r["spill_bytes"]}
    assert not spilled, f"register spills on sm_90: {spilled}"
