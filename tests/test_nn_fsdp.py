"""crossent.nn.LinearCrossEntropyLoss owns its nn.Linear, so FSDP2's fully_shard shards it as any
layer: 2 gloo ranks on CPU give the single-process gradients."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import free_port, skip_without_fsdp2

skip_without_fsdp2()


@pytest.mark.slow
def test_fully_sharded_loss_module_gives_the_single_process_gradients():
    worker = pathlib.Path(__file__).with_name("nn_fsdp_worker.py")
    run = subprocess.run([sys.executable, str(worker), str(free_port())],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loss_diff"] < 1e-5 and result["max_abs_grad_diff"] < 1e-5, result
