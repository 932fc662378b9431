"""train -> save -> load -> predict / evaluate on built-in data and CSV files, checked against
scikit-learn on the same predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import TOY_HEADER, run, toy_rows, trained, write_csv
from sklearn import metrics as skm

from crossent.cli import data as data_mod
from crossent.cli import models, store
from crossent.cli.evaluate import calibration_error

PNG = b"\x89PNG\r\n\x1a\n"


def predictions(model: Path, source: str | Path) -> pd.DataFrame:
    out = run("predict", "--model", model, "--data", source).stdout
    return pd.read_csv(io.StringIO(out))


def test_model_folder_contents_and_config():
    folder = trained("iris")
    for name in ("model.safetensors", "config.json", "checkpoint.safetensors", "loss_curve.png"):
        assert (folder / name).exists(), name
    assert (folder / "loss_curve.png").read_bytes()[:8] == PNG
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["format"] == "crossent-classifier" and cfg["format_version"] == 1
    assert cfg["task"] == "multiclass"
    assert cfg["classes"] == ["setosa", "versicolor", "virginica"]
    assert cfg["architecture"] == {
        "kind": "mlp",
        "in_features": 4,
        "hidden": [16],
        "out_features": 3,
    }
    assert cfg["features"][0] == "sepal length (cm)" and len(cfg["scaling"]["mean"]) == 4
    assert len(cfg["history"]) == 8 and cfg["training"]["epochs"] == 8
    # no pickle anywhere: every file is JSON, PNG or safetensors
    for f in folder.iterdir():
        assert f.suffix in {".json", ".png", ".safetensors"} or f.is_dir(), f


def test_save_load_predict_gives_identical_probabilities(tmp_path):
    torch.manual_seed(0)
    arch = models.architecture("mlp", 4, 3, "multiclass", [8])
    model = models.build(arch)
    X = np.random.default_rng(0).normal(size=(25, 4))
    config = {
        "task": "multiclass",
        "architecture": arch,
        "features": ["a", "b", "c", "d"],
        "scaling": {"mean": [0.0] * 4, "scale": [1.0] * 4},
        "target": "y",
        "classes": ["p", "q", "r"],
    }
    before = models.probabilities(model, X, "multiclass")
    store.save_model(tmp_path / "m", model, config)
    loaded, cfg = store.load_model(tmp_path / "m")
    after = models.probabilities(loaded, X, "multiclass")
    assert np.array_equal(before, after)
    # and through the command line: the CSV carries the probabilities exactly
    csv_path = write_csv(tmp_path / "x.csv", ["a", "b", "c", "d"], X.tolist())
    table = predictions(tmp_path / "m", csv_path)
    assert np.array_equal(table[["prob_p", "prob_q", "prob_r"]].to_numpy(), after)
    assert list(table["predicted"]) == [cfg["classes"][i] for i in after.argmax(1)]


def test_predict_matches_the_model_and_sums_to_one():
    folder = trained("cancer")
    table = predictions(folder, "breast-cancer")
    model, cfg = store.load_model(folder)
    ds = data_mod.load_for_model("breast-cancer", cfg["features"], None, need_target=False)
    probs = models.probabilities(model, models.scale(ds.X, cfg["scaling"]), "binary")
    cols = [f"prob_{c}" for c in cfg["classes"]]
    assert np.array_equal(table[cols].to_numpy(), probs)
    np.testing.assert_allclose(table[cols].sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name, source", [("iris", "iris"), ("cancer", "breast-cancer")])
def test_evaluate_metrics_equal_sklearn_on_the_same_predictions(tmp_path, name, source):
    folder = trained(name)
    res = run("evaluate", "--model", folder, "--data", source, "--split", "all", "--out", tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    classes = m["classes"]
    table = predictions(folder, source)
    probs = table[[f"prob_{c}" for c in classes]].to_numpy()
    frame, *_ = data_mod.read_source(source)
    y = data_mod.encode_labels(data_mod.label_strings(frame, "target", source), classes, source)
    pred = probs.argmax(1)

    assert m["rows"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i], abs=1e-12)
        assert m["per_class"][c]["recall"] == pytest.approx(r[i], abs=1e-12)
        assert m["per_class"][c]["f1"] == pytest.approx(f[i], abs=1e-12)
        assert m["per_class"][c]["support"] == s[i]
    for avg in ("macro", "weighted"):
        ref = skm.f1_score(y, pred, average=avg, zero_division=0)
        assert m[avg]["f1"] == pytest.approx(ref, abs=1e-12)
    if len(classes) == 2:
        auc = skm.roc_auc_score(y, probs[:, 1])
    else:
        auc = skm.roc_auc_score(y, probs, multi_class="ovr")
    assert m["roc_auc"] == pytest.approx(auc, abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["calibration_error"] == pytest.approx(calibration_error(y, probs), abs=1e-12)
    # the table on screen and the plots
    assert (
        "macro avg" in res.stdout and "ROC-AUC" in res.stdout and "confusion matrix" in res.stdout
    )
    for png in ("loss_curve.png", "roc_curve.png", "confusion_matrix.png", "calibration.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG, png


def test_evaluate_defaults_to_the_held_out_rows():
    folder = trained("iris")
    res = run("evaluate", "--model", folder, "--data", "iris")
    m = json.loads((folder / "evaluation" / "metrics.json").read_text())
    assert m["split"] == "val" and m["rows"] == 30  # 20% of 150, stratified
    assert "held-out validation rows (30)" in res.stdout
    # the validation accuracy of the kept epoch, recorded while training, is the same number
    cfg = json.loads((folder / "config.json").read_text())
    kept = cfg["training"]["kept_epoch"]
    assert m["accuracy"] == pytest.approx(cfg["history"][kept - 1]["val_accuracy"], abs=1e-12)


def test_csv_with_text_labels_round_trip(tmp_path):
    folder = trained("toy")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["classes"] == ["cat", "dog", "eel"] and cfg["target"] == "animal"
    fresh = write_csv(tmp_path / "new.csv", TOY_HEADER, toy_rows(30))
    res = run("evaluate", "--model", folder, "--data", fresh, "--out", tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "all" and m["rows"] == 30
    assert m["accuracy"] >= 0.9, res.stdout  # separable data, 15 epochs
    # predict ignores the label column and keeps the inputs on request
    out = run(
        "predict", "--model", folder, "--data", fresh, "--keep-columns", "--out", tmp_path / "p.csv"
    ).stderr
    assert "wrote 30 predictions" in out
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == [*TOY_HEADER, "predicted", "prob_cat", "prob_dog", "prob_eel"]


def test_binary_class_weights_and_smoothing_train(tmp_path):
    res = run(
        "train",
        "--data",
        "breast-cancer",
        "--out",
        tmp_path / "w",
        "--model",
        "linear",
        "--epochs",
        "2",
        "--class-weight",
        "malignant=3",
        "--label-smoothing",
        "0.1",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
    )
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["training"]["class_weights"] == [3.0, 1.0]
    assert cfg["task"] == "binary" and cfg["architecture"]["out_features"] == 1
    assert "sigmoid + BCE-with-logits" in res.stdout


def test_multiclass_balanced_weights_and_task_override(tmp_path):
    # two classes trained as multiclass (softmax over two logits), balanced weights
    rows = [[i, i % 2 * 3.0, "a" if i % 4 else "b"] for i in range(40)]
    path = write_csv(tmp_path / "imb.csv", ["x1", "x2", "label"], rows)
    run(
        "train",
        "--data",
        path,
        "--target",
        "label",
        "--out",
        tmp_path / "m",
        "--task",
        "multiclass",
        "--epochs",
        "2",
        "--class-weight",
        "balanced",
        "--val-split",
        "0",
    )
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architecture"]["out_features"] == 2
    # sklearn's balanced weights: n / (classes * count) = 40 / (2 * 30), 40 / (2 * 10)
    assert cfg["training"]["class_weights"] == pytest.approx([40 / 60, 40 / 20])
    assert cfg["history"][-1]["val_loss"] is None


def test_digits_linear_softmax_learns(tmp_path):
    run(
        "train",
        "--data",
        "digits",
        "--model",
        "linear",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--out",
        tmp_path / "d",
        "-q",
    )
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["classes"] == [str(i) for i in range(10)]
    assert cfg["history"][-1]["val_accuracy"] > 0.85  # a linear softmax gets ~95% on digits


def test_calibration_error_small_example():
    # binary: p(class 1) = 0.9 for 4 rows of which 3 are class 1, 0.2 for 2 rows of class 0
    probs = np.array([[0.1, 0.9]] * 4 + [[0.8, 0.2]] * 2)
    y = np.array([1, 1, 1, 0, 0, 0])
    # bins: {0.9: acc 0.75, n 4}, {0.2: acc 0, n 2} -> 4/6 * 0.15 + 2/6 * 0.2
    assert calibration_error(y, probs) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.2)


@pytest.mark.parametrize("k", [2, 4])
def test_calibration_error_matches_torchmetrics(k):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    gen = torch.Generator().manual_seed(k)
    probs = torch.softmax(torch.randn(500, k, generator=gen) * 2, dim=1).double()
    y = torch.randint(0, k, (500,), generator=gen)
    ours = calibration_error(y.numpy(), probs.numpy())
    if k == 2:
        ref = tm.binary_calibration_error(probs[:, 1].contiguous(), y, n_bins=15)
    else:
        ref = tm.multiclass_calibration_error(probs, y, num_classes=k, n_bins=15)
    assert ours == pytest.approx(ref.item(), abs=1e-5)


def test_data_command_lists_describes_and_exports(tmp_path):
    assert "breast-cancer" in run("data").stdout
    out = run("data", "wine", "--export", tmp_path / "wine.csv").stdout
    assert "178 rows, 13 numeric features" in out
    frame = pd.read_csv(tmp_path / "wine.csv")
    assert frame.shape == (178, 14) and set(frame["target"]) == {"class_0", "class_1", "class_2"}
    # the exported CSV trains like any CSV
    run(
        "train",
        "--data",
        tmp_path / "wine.csv",
        "--target",
        "target",
        "--model",
        "linear",
        "--epochs",
        "1",
        "--out",
        tmp_path / "m",
        "-q",
    )


def test_evaluate_on_data_missing_a_class(tmp_path):
    rows = [r for r in toy_rows(30) if r[2] != "eel"]
    path = write_csv(tmp_path / "two.csv", TOY_HEADER, rows)
    res = run("evaluate", "--model", trained("toy"), "--data", path, "--out", tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["roc_auc"] is None and "some classes have no rows" in m["roc_auc_note"]
    assert m["per_class"]["eel"]["support"] == 0
    assert "ROC-AUC            n/a" in res.stdout
    assert (tmp_path / "ev" / "roc_curve.png").exists()
