"""patch() under FSDP2 (fully_shard) and FSDP1 (FullyShardedDataParallel auto-wrap), CPU, gloo,
2 ranks: the sharded head's weight is gathered by FSDP's hooks around the fused loss, so gradients
equal the single-process unpatched model's."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import free_port, skip_without_fsdp2

pytest.importorskip("transformers")
pytest.importorskip("crossent.integrations.transformers")
skip_without_fsdp2()

WORKER = pathlib.Path(__file__).with_name("fsdp_worker.py")


@pytest.mark.slow
def test_patched_fsdp2_gradients_equal_single_process():
    # the fused path (this tiny model would otherwise take crossent's composed small-problem route)
    env = dict(os.environ, CROSSENT_BACKEND="fused")
    run = subprocess.run([sys.executable, str(WORKER), str(free_port())],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    heads = {"before": "FSDPLinear", "after": "FSDPLinear",  # FSDP2: patch before / after fully_shard
             "fsdp1": "FullyShardedDataParallel"}  # FSDP1 auto-wraps the head after patch
    for order, head_class in heads.items():
        result = results[order]
        assert result["head_class"] == head_class, order  # the head really was sharded
        assert result["loss_diff"] < 1e-5, (order, result)
        assert result["max_abs_grad_diff"] < 1e-5, (order, result)
