"""crossent.distributed on 2 and 4 gloo ranks (CPU): one process group per world size runs every
case of cases_*.py (a launch costs 10-20 s here), and each case is reported as its own test."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import FSDP2_CPU_REASON, free_port, fsdp2_runs_on_cpu

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
pytest.importorskip("torch.distributed.tensor")

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
import cases  # noqa: E402  (the case registry: names are known without a process group)

WORLDS = (2, 4)
_RUNS: dict[int, subprocess.Popen] = {}
_RESULTS: dict[int, dict] = {}


def _launch(world: int) -> dict:
    """Both launches start together at the first test (their imports overlap), then each is
    awaited once."""
    if not _RUNS:
        for w in WORLDS:
            _RUNS[w] = subprocess.Popen(
                [sys.executable, str(HERE / "harness.py"), str(w), str(free_port())],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
    if world not in _RESULTS:
        try:
            out, err = _RUNS[world].communicate(timeout=600)
        except subprocess.TimeoutExpired:
            _RUNS[world].kill()  # its ranks then fail their next collective (30 s gloo timeout) and exit
            out, err = _RUNS[world].communicate()
            pytest.fail(f"the {world}-rank launch timed out:\n{err[-4000:]}")
        if _RUNS[world].returncode != 0:
            pytest.fail(f"the {world}-rank launch failed:\n{err[-4000:]}")
        _RESULTS[world] = json.loads(out.strip().splitlines()[-1])
    return _RESULTS[world]


@pytest.mark.slow
@pytest.mark.parametrize(
    "world,name", [(w, n) for w in WORLDS for n in cases.names(w)], ids=lambda v: str(v)
)
def test_vocab_parallel_case(world, name):
    if name.startswith("fsdp2") and not fsdp2_runs_on_cpu():
        pytest.skip(FSDP2_CPU_REASON)
    results = _launch(world)
    assert name in results, f"{name} did not run"
    failure = results[name]
    assert failure is None, failure
