"""`crossent explain` prints the seeds' numbers, and every option's result matches torch."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import run


def result_of(out: str) -> str:
    """The number on the 'loss (...) = X' line."""
    m = re.search(r"^loss \((?:mean|sum|none)\) = (.+)$", out, re.MULTILINE)
    assert m, out
    return m.group(1)


def test_seed_multiclass_example_0_3567():
    out = run("explain", "--probs", "0.2,0.7,0.1", "--target", "1").stdout
    assert "loss = -log p[1] = -log(0.7000) = 0.3567" in out
    assert result_of(out) == "0.3567"
    assert "crossent.nll_loss" in out and "agrees" in out


def test_seed_binary_example_0_1054():
    out = run("explain", "--binary", "--p", "0.9", "--y", "1").stdout
    assert result_of(out) == "0.1054"
    assert "-[y * log(p) + (1 - y) * log(1 - p)]" in out
    assert "crossent.binary_cross_entropy" in out and "agrees" in out


def test_logits_show_the_softmax():
    out = run("explain", "--logits", "1.0,2.0,0.1", "--target", "1").stdout
    assert "softmax" in out
    # the softmax column: 0.2424, 0.6590, 0.0986
    for p in ("0.2424", "0.6590", "0.0986"):
        assert p in out
    expected = F.cross_entropy(torch.tensor([[1.0, 2.0, 0.1]]), torch.tensor([1])).item()
    assert result_of(out) == f"{expected:.4f}" == "0.4170"


def test_binary_logit_shows_the_sigmoid():
    out = run("explain", "--binary", "--logit", "2.0", "--y", "1").stdout
    assert "p = sigmoid(x) = 0.8808" in out
    expected = F.binary_cross_entropy_with_logits(torch.tensor([2.0]), torch.tensor([1.0])).item()
    assert result_of(out) == f"{expected:.4f}"


PROBS = [[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]]
LOGITS = [[1.0, 2.0, 0.1], [-0.5, 0.3, 2.2], [0.0, 0.0, 0.0]]


def _rows(rows):
    return ";".join(",".join(str(v) for v in r) for r in rows)


@pytest.mark.parametrize(
    "kind, weight, eps, ignore, reduction",
    [
        ("logits", None, 0.0, -100, "mean"),
        ("logits", [1.0, 2.0, 0.5], 0.0, -100, "mean"),
        ("logits", None, 0.2, -100, "sum"),
        ("logits", [1.0, 2.0, 0.5], 0.1, 0, "mean"),
        ("logits", [1.0, 2.0, 0.5], 0.1, 2, "none"),
        ("probs", [3.0, 1.0, 1.0], 0.0, -100, "mean"),
        ("probs", None, 0.3, 1, "mean"),
    ],
)
def test_options_match_torch(kind, weight, eps, ignore, reduction):
    rows = LOGITS if kind == "logits" else PROBS
    targets = [1, 0, 2]
    args = [
        "explain",
        f"--{kind}",
        _rows(rows),
        "--target",
        "1,0,2",
        "--label-smoothing",
        eps,
        "--ignore-index",
        ignore,
        "--reduction",
        reduction,
    ]
    if weight:
        args += ["--weight", ",".join(map(str, weight))]
    out = run(*args).stdout
    x = torch.tensor(rows, dtype=torch.float64)
    if kind == "probs":
        x = x.log()
    w = torch.tensor(weight, dtype=torch.float64) if weight else None
    ref = F.cross_entropy(
        x,
        torch.tensor(targets),
        weight=w,
        ignore_index=ignore,
        reduction=reduction,
        label_smoothing=eps,
    )
    values = [float(v) for v in result_of(out).strip("[]").split(",")]
    torch.testing.assert_close(
        torch.tensor(values, dtype=torch.float64), ref.reshape(-1), atol=6e-5, rtol=0
    )
    assert "agrees" in out


def test_weighted_mean_divides_by_the_weights():
    out = run("explain", "--probs", _rows(PROBS[:2]), "--target", "1,0", "--weight", "1,2,1").stdout
    assert "sum w[t] = 3.0000" in out


def test_all_ignored_is_nan_like_torch():
    out = run("explain", "--probs", "0.2,0.7,0.1", "--target", "1", "--ignore-index", "1").stdout
    assert result_of(out) == "nan"
    assert "0 / 0 = nan" in out


def test_binary_options_match_torch():
    out = run(
        "explain",
        "--binary",
        "--logit",
        "2,-1,0.5",
        "--y",
        "1,0,1",
        "--pos-weight",
        "3",
        "--weight",
        "2,1,0.5",
        "--label-smoothing",
        "0.1",
        "--reduction",
        "sum",
    ).stdout
    y = torch.tensor([1.0, 0.0, 1.0]) * 0.9 + 0.05
    ref = F.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64),
        y.double(),
        weight=torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64),
        pos_weight=torch.tensor([3.0], dtype=torch.float64),
        reduction="sum",
    )
    assert result_of(out) == f"{ref.item():.4f}"


def test_binary_probability_of_zero_is_clamped_like_torch():
    out = run("explain", "--binary", "--p", "0", "--y", "1").stdout
    assert result_of(out) == "100.0000"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--probs", "0.2,0.7,0.2", "--target", "1"], "sums to 1.1"),
        (["--probs", "0.2,0.7,x", "--target", "1"], "not a comma-separated list of numbers"),
        (["--probs", "0.2,0.8", "--target", "2"], "not a class index in 0..1"),
        (["--probs", "0.2,0.8"], "--target is required"),
        (["--probs", "0.2,0.8", "--logits", "1,2", "--target", "0"], "exactly one of --probs"),
        (["--probs", "0.2,0.8;0.5,0.5", "--target", "1"], "one per row"),
        (["--logits", "1,2,3", "--target", "1", "--weight", "1,2"], "--weight needs 3"),
        (["--binary", "--p", "1.5", "--y", "1"], "must lie in [0, 1]"),
        (["--binary", "--p", "0.9"], "add --y"),
        (["--binary", "--p", "0.9", "--y", "1", "--pos-weight", "2"], "give --logit"),
        (["--p", "0.9", "--y", "1"], "add --binary"),
        (["--binary", "--probs", "0.2,0.8", "--y", "1"], "drop --binary"),
    ],
)
def test_bad_input(args, message):
    result = run("explain", *args, expect=2)
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")


def test_one_hot_target_is_read_as_its_class_index():
    out = run("explain", "--probs", "0.2,0.7,0.1", "--target", "0,1,0").stdout
    assert out.startswith("--target 0,1,0 read as one-hot: class index 1 (the same as --target 1)")
    assert result_of(out) == "0.3567"  # the seed's number, as with --target 1
    two = run("explain", "--logits", _rows(LOGITS[:2]), "--target", "0,1,0;0,0,1").stdout
    assert "class index 1,2" in two
    assert result_of(two) == result_of(
        run("explain", "--logits", _rows(LOGITS[:2]), "--target", "1,2").stdout
    )


@pytest.mark.parametrize(
    "kind, weight, eps, reduction",
    [
        ("probs", None, 0.0, "mean"),
        ("logits", None, 0.0, "sum"),
        ("logits", [1.0, 2.0, 0.5], 0.1, "mean"),
        ("probs", [3.0, 1.0, 1.0], 0.2, "none"),
    ],
)
def test_probability_targets_match_torch(kind, weight, eps, reduction):
    rows = LOGITS if kind == "logits" else PROBS
    q = [[0.1, 0.8, 0.1], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    args = ["explain", f"--{kind}", _rows(rows), "--target", _rows(q), "--label-smoothing", eps]
    args += ["--reduction", reduction] + (
        ["--weight", ",".join(map(str, weight))] if weight else []
    )
    out = run(*args).stdout
    assert "read as class probabilities (soft targets" in out and "agrees" in out
    x = torch.tensor(rows, dtype=torch.float64)
    x = x.log() if kind == "probs" else x
    w = torch.tensor(weight, dtype=torch.float64) if weight else None
    ref = F.cross_entropy(
        x, torch.tensor(q, dtype=torch.float64), weight=w, reduction=reduction, label_smoothing=eps
    )
    values = [float(v) for v in result_of(out).strip("[]").split(",")]
    torch.testing.assert_close(
        torch.tensor(values, dtype=torch.float64), ref.reshape(-1), atol=6e-5, rtol=0
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--probs", "0.2,0.7,0.1", "--target", "0.5,0.7,0.1"], "neither one class index nor"),
        (["--probs", "0.2,0.7,0.1", "--target", "0,1"], "give class indices, one per row"),
        (["--probs", "0.2,0.8;0.5,0.5", "--target", "0,1;1,0;1,0"], "3 rows for 2"),
        (["--probs", "0.2,0.8", "--target", "1.5"], "not a list of class indices"),
    ],
)
def test_bad_probability_targets(args, message):
    result = run("explain", *args, expect=2)
    assert message in result.stderr and result.stderr.count("\n") == 1
