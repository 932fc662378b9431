"""DeepSpeed ZeRO-3 on CPU (DS_ACCELERATOR=cpu, gloo, 2 ranks) through crossent's transformers
patch with the normaliser convention (global_normalizer; loss times the DP size, as ZeRO
averages): full gradients equal one process's. A launch takes ~1-2 min on 2 cores (DeepSpeed and
transformers import in every rank), so it runs only with CROSSENT_TEST_DEEPSPEED=1 and deepspeed
installed (it is no dependency of crossent)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import free_port

if os.environ.get("CROSSENT_TEST_DEEPSPEED") != "1":
    pytest.skip("set CROSSENT_TEST_DEEPSPEED=1 to run the DeepSpeed ZeRO-3 test (1-2 min)",
                allow_module_level=True)
pytest.importorskip("deepspeed")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_zero3_patched_model_with_global_normalizer_gives_the_single_process_gradients():
    worker = pathlib.Path(__file__).with_name("zero3_worker.py")
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    run = subprocess.run([sys.executable, str(worker), str(free_port())], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # DeepSpeed runs (and reduces) this float64 model in float32 without an fp16/bf16 section:
    # differences of float32 rounding (~3e-8 measured) against the float64 reference
    assert result["max_abs_grad_diff"] < 1e-6 and result["loss_diff"] < 1e-6, result
    assert result["refused"], "a ZeRO-3 parameter passed to the functional loss was not refused"
    assert result["head_module_grad_diff"] < 1e-5, result  # float32 model
