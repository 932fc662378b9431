"""examples/topk_distillation.py (the top-k distillation recipe) runs as documented: crossent's loss
equals the float64 reference on a batch, and training on the served top-k lowers both the top-k
loss and the student's full KL to the dense teacher, with and without the tail bucket."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "topk_distillation.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("topk_distillation", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags", [[], ["--no-tail", "--k", "4"]], ids=["tail-k16", "renormalised-k4"])
def test_recipe_trains_the_student_towards_the_teacher(example, flags, capsys):
    result = example.main(["--steps", "20", "--batch", "64", "--lr", "1e-2", *flags])
    assert result["reference_gap"] < 1e-5
    assert result["topk_loss_after"] < 0.8 * result["topk_loss_before"]
    assert result["full_kl_after"] < result["full_kl_before"]
    assert "top-k loss" in capsys.readouterr().out
