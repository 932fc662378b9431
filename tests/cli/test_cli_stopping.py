"""Training that stops when it should: the default budget, early stopping on the validation
loss with the best epoch's weights restored and saved, the run saying which epoch and why, the
loss curve marking it; --epochs forces a number; and no library warning reaches the user."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run, write_csv

from crossent.cli import plots, stopping


@pytest.mark.parametrize(
    "rows, batch, epochs, patience",
    [
        (176, 32, 2000, 100),  # grunfeld's training rows: 6 steps an epoch
        (120, 32, 2000, 150),
        (20_000, 32, 32, 10),
        (1_000_000, 32, 20, 10),  # at least MIN_EPOCHS
    ],
)
def test_budget_counts_steps(rows, batch, epochs, patience):
    assert stopping.budget(rows, batch) == (epochs, patience)


def test_early_stopping_rule():
    rule = stopping.EarlyStopping(patience=3, monitor="val_loss")
    losses = [1.0, 0.8, 0.7, 0.70001, 0.75, 0.69, 0.71, 0.72, 0.73]
    stopped = None
    for epoch, loss in enumerate(losses, start=1):
        rule.update({"epoch": epoch, "val_loss": loss})
        if rule.stop:
            stopped = epoch
            break
    # 0.70001 is no improvement (relative tolerance); 0.69 is; then 3 epochs without
    assert (rule.best_epoch, rule.best, stopped) == (6, 0.69, 9)
    assert "had not improved for 3 epochs (patience 3)" in rule.reason(9, 100, forced=False)
    never = stopping.EarlyStopping(patience=None, monitor="val_loss")
    for epoch, loss in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        never.update({"epoch": epoch, "val_loss": loss})
    assert not never.stop and never.reason(4, 4, forced=True) == "ran the 4 epochs of --epochs"


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """150 rows x 60 noise features with a label from two of them: an MLP memorises the
    training rows and the validation loss turns up within a few dozen epochs."""
    tmp = tmp_path_factory.mktemp("overfit")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 60))
    y = np.where(X[:, 0] + X[:, 1] + rng.normal(size=150) > 0, "yes", "no")
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(60)]).assign(label=y)
    frame.to_csv(tmp / "overfit.csv", index=False)
    out = tmp / "m"
    res = run("train", "--data", tmp / "overfit.csv", "--target", "label", "--lr", "0.01",
              "--out", out)  # fmt: skip
    return tmp, out, res


def test_stops_early_and_keeps_the_best_epoch(overfit):
    tmp, out, res = overfit
    cfg = json.loads((out / "config.json").read_text())
    tr, history = cfg["training"], cfg["history"]
    val = [h["val_loss"] for h in history]
    kept = tr["kept_epoch"]
    assert val[kept - 1] == min(val) and kept < len(history)
    assert len(history) == kept + tr["patience"] < tr["max_epochs"]
    assert f"stopped after epoch {len(history)}: the validation loss had not improved for" in (
        res.stdout
    )
    assert tr["stopped"] in res.stdout
    assert f"kept the weights of epoch {kept} (the lowest validation loss)" in res.stdout
    assert "up to 2000 epochs, stopping when the validation loss has not improved" in res.stdout
    # the saved weights are the kept epoch's: evaluate on the validation rows gives its numbers
    run("evaluate", "--model", out, "--data", tmp / "overfit.csv", "--out", tmp / "ev")
    m = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(history[kept - 1]["val_accuracy"], abs=1e-12)
    assert m["split"] == "val"


def test_epochs_forces_a_number_and_keep_epoch_last(overfit, tmp_path):
    tmp, _, _ = overfit
    out = tmp_path / "m"
    res = run("train", "--data", tmp / "overfit.csv", "--target", "label", "--lr", "0.01",
              "--epochs", "30", "--keep-epoch", "last", "--out", out)  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["history"]) == 30 and cfg["training"]["kept_epoch"] == 30
    assert "ran the 30 epochs of --epochs" in res.stdout
    assert cfg["training"]["patience"] is None
    run("evaluate", "--model", out, "--data", tmp / "overfit.csv", "--out", tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(cfg["history"][-1]["val_accuracy"], abs=1e-12)


def test_no_validation_split_stops_on_the_training_loss(tmp_path):
    rows = [[i % 5 * 0.5, (i * 3) % 7, "ab"[i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows)
    res = run("train", "--data", path, "--target", "y", "--val-split", "0", "--patience", "3",
              "--lr", "0.05", "--out", tmp_path / "m")  # fmt: skip
    assert "stopping when the training loss has not improved for 3 epochs" in res.stdout
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["training"]["kept_epoch"] == len(cfg["history"])  # no validation: the last
    assert "no validation rows to choose by" in res.stdout


def test_the_loss_curve_marks_the_kept_epoch(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.loss_curves({"training": [3, 2, 1, 1.5], "validation": [3, 2, 1, 2]}, tmp_path / "l.png",
                      "t", mark=(3, "kept: epoch 3"))  # fmt: skip
    (ax,) = figures[0].axes
    marks = [line for line in ax.get_lines() if line.get_label() == "kept: epoch 3"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 3]
    assert "kept: epoch 3" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_labels_keep_only_drawable_characters():
    assert plots.drawable("sunny") == "sunny"
    assert plots.drawable("\u2600\ufe0f sunny").endswith("sunny")  # DejaVu Sans has U+2600
    assert plots.drawable("\U0001f327\ufe0f rain") == "rain"
    assert plots.drawable("\U0001f327") == "cloud with rain"


def test_no_library_warnings_reach_the_user(tmp_path):
    """Day-first dates (pandas' dayfirst warning), emoji class names (matplotlib's missing-glyph
    warnings): train, evaluate and predict record no warning at all."""
    days = pd.date_range("2021-01-13", periods=60, freq="D").strftime("%d/%m/%Y")
    labels = ["\U0001f327\ufe0f rain", "\u2600\ufe0f sunny", "\U0001f32b fog"]
    rows = [[d, i % 4 * 1.5, labels[i % 3]] for i, d in enumerate(days)]
    path = write_csv(tmp_path / "w.csv", ["date", "wind", "weather"], rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run("train", "--data", path, "--target", "weather", "--epochs", "3",
                  "--out", tmp_path / "m")  # fmt: skip
        run("evaluate", "--model", tmp_path / "m", "--data", path)
        run("predict", "--model", tmp_path / "m", "--data", path)
    assert [str(w.message) for w in caught] == []
    assert "date column 'date' expanded" in res.stderr
    assert all(line.startswith("note: ") for line in res.stderr.splitlines()), res.stderr
    history = json.loads((tmp_path / "m" / "config.json").read_text())["history"]
    assert not math.isnan(history[0]["train_loss"])
