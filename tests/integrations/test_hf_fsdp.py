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

from conftest import free_port

pytest.importorskip("transformers")
pytest.importorskip("crossent.integrations.transformers")
fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 fully_shard", allow_module_level=True)
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

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
