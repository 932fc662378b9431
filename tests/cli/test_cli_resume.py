"""--resume after an interruption finishes with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import run
from safetensors.torch import load_file

from crossent.cli import training

ARGS = [
    "--data",
    "iris",
    "--epochs",
    "5",
    "--batch-size",
    "32",
    "--lr",
    "0.01",
    "--hidden",
    "8",
    "--seed",
    "3",
    "-q",
]  # 120 training rows: 4 steps per epoch


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resuming"
    ha = json.loads((a / "config.json").read_text())["history"]
    hb = json.loads((b / "config.json").read_text())["history"]
    assert ha == hb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "full"
    run("train", *ARGS, "--out", out)
    return out


def test_stop_after_epochs_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"
    res = run("train", *ARGS, "--out", out, "--stop-after-epochs", "2")
    assert "rerun with --resume" in res.stdout
    assert not (out / "model.safetensors").exists()  # stopped: no final model yet
    res = run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


def test_keyboard_interrupt_mid_epoch_then_resume(tmp_path, uninterrupted, monkeypatch):
    real = training.make_optimizer

    def interrupted_after_10_steps(*args, **kwargs):
        opt = real(*args, **kwargs)
        step, calls = opt.step, [0]

        def step_or_interrupt(*a, **k):
            calls[0] += 1
            if calls[0] > 10:  # in the middle of epoch 3, after 2 full epochs
                raise KeyboardInterrupt
            return step(*a, **k)

        opt.step = step_or_interrupt
        return opt

    out = tmp_path / "run"
    monkeypatch.setattr(training, "make_optimizer", interrupted_after_10_steps)
    res = run("train", *ARGS, "--out", out, expect=130)
    assert "checkpoint (epoch 2)" in res.stderr and "--resume" in res.stderr
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(training, "make_optimizer", real)
    run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


def test_resume_can_extend_the_epochs(tmp_path, uninterrupted):
    out = tmp_path / "run"
    run("train", *[a if a != "5" else "3" for a in ARGS], "--out", out)
    run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "run"
    run("train", *ARGS, "--out", out, "--stop-after-epochs", "1")
    res = run("train", *ARGS, "--out", out, "--resume", "--lr", "0.5", expect=2)
    assert "different lr" in res.stderr
    res = run("train", *ARGS, "--out", out, expect=2)
    assert "already holds a training run" in res.stderr
    run("train", *ARGS, "--out", out, "--overwrite")


def test_resume_with_fewer_epochs_is_refused(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    res = run("train", *[a if a != "5" else "3" for a in ARGS], "--out", out, "--resume", expect=2)
    assert "at epoch 5, past --epochs 3" in res.stderr


def test_resume_without_checkpoint_is_refused(tmp_path):
    res = run("train", *ARGS, "--out", tmp_path / "none", "--resume", expect=2)
    assert "no checkpoint" in res.stderr
