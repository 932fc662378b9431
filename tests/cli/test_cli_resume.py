"""--resume after an interruption finishes with exactly the weights of an uninterrupted run: with
a fixed --epochs, and in the default budget, whose stopping rule, learning-rate schedule and best
weights travel in the checkpoint too. Interruptions are made by driving the library (Ctrl-C
raised from inside the loop), not by an option of the shipped command."""

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


@pytest.fixture()
def every_epoch(monkeypatch):
    """A checkpoint after every epoch (the command writes one every few seconds)."""
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 0.0)


def interrupt_after_checkpoint(monkeypatch, epoch: int) -> None:
    """Ctrl-C right after the checkpoint of `epoch` is written."""
    real = training.Loop.checkpoint

    def checkpoint_then_interrupt(self, history):
        real(self, history)
        if len(history) == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.Loop, "checkpoint", checkpoint_then_interrupt)


def test_interrupted_after_an_epoch_then_resume_equals_uninterrupted(
    tmp_path, uninterrupted, monkeypatch, every_epoch
):
    out = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch, 2)
    res = run("train", *ARGS, "--out", out, expect=130)
    assert "the last checkpoint (epoch 2)" in res.stderr and "--resume" in res.stderr
    assert not (out / "model.safetensors").exists()  # stopped: no final model yet
    monkeypatch.undo()
    run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


AUTO = ["--data", "iris", "--lr", "0.05", "--hidden", "8", "--patience", "4", "--seed", "1", "-q"]


def test_default_budget_resumes_its_stopping_rule_schedule_and_best_weights(
    tmp_path, monkeypatch, every_epoch
):
    full = tmp_path / "full"
    run("train", *AUTO, "--out", full)
    cfg = json.loads((full / "config.json").read_text())
    stopped = cfg["training"]["epochs"]
    assert "had not improved for 4 epochs" in cfg["training"]["stopped"]
    assert cfg["training"]["kept_epoch"] == stopped - 4  # the best epoch, restored
    out = tmp_path / "run"
    interrupt_after_checkpoint(monkeypatch, stopped - 2)  # after the best epoch
    run("train", *AUTO, "--out", out, expect=130)
    monkeypatch.undo()
    run("train", *AUTO, "--out", out, "--resume")
    assert_same_run(out, full)
    again = json.loads((out / "config.json").read_text())["training"]
    assert again["kept_epoch"] == cfg["training"]["kept_epoch"]


def test_keyboard_interrupt_mid_epoch_then_resume(
    tmp_path, uninterrupted, monkeypatch, every_epoch
):
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
    monkeypatch.setattr(training, "CHECKPOINT_SECONDS", 5.0)  # as shipped: same result
    run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


def test_resume_can_extend_the_epochs(tmp_path, uninterrupted):
    out = tmp_path / "run"
    run("train", *[a if a != "5" else "3" for a in ARGS], "--out", out)
    run("train", *ARGS, "--out", out, "--resume")
    assert_same_run(out, uninterrupted)


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "run"
    run("train", *[a if a != "5" else "1" for a in ARGS], "--out", out)
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
