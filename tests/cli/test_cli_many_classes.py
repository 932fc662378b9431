"""Thousands of classes: evaluate finishes in seconds with bounded output, the numbers agree with
scikit-learn's, and train says why the split is not stratified."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import run
from sklearn import metrics as skm

from crossent.cli import metrics, models, store

N, C, D = 20_000, 2_000, 16


def _model_and_data(tmp: Path) -> tuple[Path, Path]:
    """A linear model whose class c scores features near its prototype, and 20000 rows drawn
    around 2000 prototypes (classes of 1 to ~20 rows): accurate but not perfect."""
    gen = np.random.default_rng(0)
    protos = gen.normal(size=(C, D))
    y = np.concatenate([np.arange(C), gen.integers(0, C, N - C)])  # every class present
    X = protos[y] + 0.6 * gen.normal(size=(N, D))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(D)])
    frame["label"] = [f"class_{c:04d}" for c in y]
    csv = tmp / "many.csv"
    frame.to_csv(csv, index=False)
    arch = models.architecture("linear", D, C, "multiclass", [])
    model = models.build(arch)
    with torch.no_grad():  # logits = 2 * <x, proto> - |proto|^2: nearest prototype wins
        model.layers[0].weight.copy_(torch.as_tensor(4 * protos))
        model.layers[0].bias.copy_(torch.as_tensor(-2 * (protos**2).sum(1)))
    classes = [f"class_{c:04d}" for c in range(C)]
    names = [f"f{i}" for i in range(D)]
    spec = {
        "version": 1,
        "columns": [
            {"name": n, "kind": "numeric", "median": 0.0, "mean": 0.0, "scale": 1.0} for n in names
        ],
        "outputs": names,
    }
    config = {
        "task": "multiclass",
        "architecture": arch,
        "features": names,
        "scaling": {"mean": [0.0] * D, "scale": [1.0] * D},
        "preprocessing": spec,
        "target": "label",
        "classes": classes,
    }
    store.save_model(tmp / "model", model, config)
    return tmp / "model", csv


def test_2000_classes_evaluate_in_seconds_with_bounded_output(tmp_path, capsys):
    model, csv = _model_and_data(tmp_path)
    out = tmp_path / "ev"
    start = time.perf_counter()
    res = run("evaluate", "--model", model, "--data", csv, "--out", out)
    seconds = time.perf_counter() - start
    size = len(res.stdout.encode())
    with capsys.disabled():
        print(f"\nevaluate, {N} rows x {C} classes: {seconds:.1f} s, stdout {size} bytes")
    assert seconds < 30, seconds
    assert size < 100_000, size
    assert len(res.stdout.splitlines()) < 80
    assert "(1980 smaller classes in per_class.csv)" in res.stdout
    assert "most confused pairs" in res.stdout and "top-5 accuracy" in res.stdout

    m = json.loads((out / "metrics.json").read_text())
    assert (out / "metrics.json").stat().st_size < 2_000_000
    assert m["confusion_matrix"] is None and m["roc_auc"] is None
    assert "not computed above 100 classes" in m["roc_auc_note"]
    assert not (out / "confusion_matrix.png").exists()  # 2000 x 2000 cells: unreadable
    assert (out / "roc_curve.png").exists() and (out / "calibration.png").exists()

    # the numbers, against scikit-learn on the same predictions
    frame = pd.read_csv(csv)
    y = frame["label"].str.slice(6).astype(int).to_numpy()
    net, _ = store.load_model(model)
    probs = models.probabilities(net, frame.iloc[:, :D].to_numpy(copy=True), "multiclass")
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert 0.5 < m["accuracy"] < 0.99
    assert m["macro"]["f1"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=range(C), zero_division=0), abs=1e-12
    )
    per = pd.read_csv(out / "per_class.csv")
    assert len(per) == C and per["support"].sum() == N
    assert per["support"].is_monotonic_decreasing
    pairs = pd.read_csv(out / "confusion_pairs.csv")
    dense = skm.confusion_matrix(y, pred, labels=range(C))
    t = pairs["true"].str.slice(6).astype(int)
    p = pairs["predicted"].str.slice(6).astype(int)
    assert pairs["rows"].sum() == N and (dense[t, p] == pairs["rows"]).all()
    assert len(pairs) == np.count_nonzero(dense)


def test_top_k_and_log_loss_equal_sklearn():
    gen = np.random.default_rng(1)
    for k in (4, 12, 150):
        logits = gen.normal(size=(600, k)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        y = gen.integers(0, k, 600)
        m = metrics.compute_metrics(y, probs, [f"c{i}" for i in range(k)])
        for t, value in m["top_k_accuracy"].items():
            ref = skm.top_k_accuracy_score(y, probs, k=int(t), labels=range(k))
            assert value == pytest.approx(ref, abs=1e-12), (k, t)
        assert list(m["top_k_accuracy"]) == [str(t) for t in (3, 5, 10) if t < k]
        assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(k)), abs=1e-12)


def test_train_says_why_the_split_is_not_stratified(tmp_path):
    rows = [[i * 0.1, (i * 7) % 5, f"c{i % 60 if i < 120 else 0}"] for i in range(130)]
    path = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["a", "b", "y"]).to_csv(path, index=False)
    res = run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "m")
    assert (
        "note: the validation split is random, not stratified: the validation split (26 rows) "
        "is smaller than the number of classes (60); raise --val-split to stratify" in res.stderr
    )
    rows.append([0.5, 1, "lonely"])
    pd.DataFrame(rows, columns=["a", "b", "y"]).to_csv(path, index=False)
    res = run("train", "--data", path, "--target", "y", "--epochs", "1", "--overwrite",
              "--out", tmp_path / "m")  # fmt: skip
    assert "1 of the 61 classes has a single row (stratifying needs two per class)" in res.stderr


def test_metrics_memory_grows_with_rows_times_classes_not_classes_squared():
    """500 rows x 3000 classes: the probabilities are 12 MB, a dense confusion matrix 72 MB.
    Everything evaluate computes from them must fit in a few copies of the probabilities."""
    import tracemalloc

    n, k = 500, 3000
    gen = np.random.default_rng(2)
    probs = gen.random((n, k))
    probs /= probs.sum(1, keepdims=True)
    y = gen.integers(0, k, n)
    classes = [f"c{i}" for i in range(k)]
    tracemalloc.start()
    try:
        m = metrics.compute_metrics(y, probs, classes)
        metrics.report(y, probs, classes, m)
        metrics.tables(y, probs, classes, m)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * probs.nbytes, peak  # numpy reports its buffers to tracemalloc
