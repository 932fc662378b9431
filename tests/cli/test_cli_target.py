"""A target that is a quantity (many distinct numbers) or an id (a value per row) is refused with
a sentence saying why, unless --classification; class-coded numbers stay classes."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run, write_csv

from crossent.cli.target import NUMERIC_CLASSES_MAX


def _table(tmp_path, labels):
    rows = [[i * 0.37 % 5, (i * 7) % 11, y] for i, y in enumerate(labels)]
    return write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows)


def test_continuous_target_is_refused_with_why(tmp_path):
    labels = [round(20 + (i * 31 % 67) * 0.19, 2) for i in range(120)]  # 67 temperatures
    path = _table(tmp_path, labels)
    res = run("train", "--data", path, "--target", "y", expect=2)
    assert res.stderr.count("\n") == 1
    assert (
        "the target 'y' of " in res.stderr
        and "holds 67 distinct numbers (20, 20.19, 20.38, ...)" in res.stderr
    )
    assert "looks like a quantity to predict, not classes" in res.stderr
    assert "bin it into a few classes first, or pass --classification" in res.stderr
    # --classification: each value a class, as the user asked
    out = tmp_path / "m"
    run("train", "--data", path, "--target", "y", "--classification", "--epochs", "1",
        "--val-split", "0", "--out", out, "-q")  # fmt: skip
    assert len(json.loads((out / "config.json").read_text())["classes"]) == len(set(labels))
    # and `crossent data` says what train would do
    assert "train would refuse: the target 'y'" in run("data", path, "--target", "y").stdout


@pytest.mark.parametrize("distinct, refused", [(NUMERIC_CLASSES_MAX, False), (30, True)])
def test_whole_numbers_many_values_refused_few_kept(tmp_path, distinct, refused):
    path = _table(tmp_path, [i % distinct for i in range(150)])
    res = run("train", "--data", path, "--target", "y", "--epochs", "1", "--out",
              tmp_path / "m", "-q", expect=2 if refused else 0)  # fmt: skip
    if refused:
        assert f"holds {distinct} distinct whole numbers (0, 1, 2, ...)" in res.stderr


def test_id_like_target_is_refused(tmp_path):
    path = _table(tmp_path, [f"order-{i:05d}" for i in range(40)])
    res = run("train", "--data", path, "--target", "y", expect=2)
    assert "looks like a row id (a different value in each of its 40 rows)" in res.stderr
    assert "--classification" in res.stderr


def test_text_and_coded_targets_are_unchanged(tmp_path):
    path = _table(tmp_path, [["low", "mid", "high"][i % 3] for i in range(60)])
    run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "a", "-q")
    path = _table(tmp_path, [3 + i % 7 for i in range(60)])  # wine-quality-like scores 3..9
    run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "b", "-q")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["classes"] == [
        str(c) for c in range(3, 10)
    ]
