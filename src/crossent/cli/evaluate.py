"""`crossent evaluate`: scikit-learn's metrics of a saved model on labelled data, plus plots.

All metrics come from scikit-learn except the expected calibration error, which it does not have:
`calibration_error` bins confidences like torchmetrics' Binary/MulticlassCalibrationError (equal
width bins (lo, hi], L1 norm) and tests/cli compares the two when torchmetrics is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ._errors import CliError
from .data import model_and_data_options

ECE_BINS = 15


def calibration_error(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (rows in bin / N) * |accuracy - confidence|.

    Binary (K = 2): confidence = p(class 1), "accuracy" = fraction of class 1 in the bin.
    Multi-class: confidence = max_c p_c, accuracy = fraction of argmax predictions that are right.
    """
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.shape[1] == 2:
        conf, hit = probs[:, 1], (y_true == 1).astype(np.float64)
    else:
        conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds (edges[b], edges[b+1]]; a confidence of exactly 0 goes to the first bin
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hit, minlength=n_bins)
    used = count > 0
    gap = np.abs(hit_sum[used] / count[used] - conf_sum[used] / count[used])
    return float(np.sum(count[used] / len(conf) * gap))


def compute_metrics(y_true: Any, probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Every number of the report, from the true class indices and (N, K) probabilities."""
    import numpy as np
    from sklearn import metrics as skm

    k = len(classes)
    labels = list(range(k))
    pred = probs.argmax(axis=1)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "rows": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
    }
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = skm.precision_recall_fscore_support(
            y_true, pred, labels=labels, average=avg, zero_division=0
        )
        out[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}

    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"], out["roc_auc_note"] = None, "undefined: the data holds a single class"
    elif k == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
        out["roc_auc_note"] = f"binary, positive class {classes[1]!r}"
    elif len(present) < k:
        out["roc_auc"] = None
        out["roc_auc_note"] = "undefined one-vs-rest: some classes have no rows in this data"
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
        out["roc_auc_note"] = "one-vs-rest, macro average"
    out["log_loss"] = float(skm.log_loss(y_true, probs, labels=labels))
    out["calibration_error"] = calibration_error(y_true, probs)
    out["calibration_error_note"] = f"expected calibration error, {ECE_BINS} equal-width bins"
    out["confusion_matrix"] = skm.confusion_matrix(y_true, pred, labels=labels).tolist()
    out["classes"] = list(classes)
    return out


def report(y_true: Any, probs: Any, classes: Sequence[str], m: dict[str, Any]) -> str:
    """The table on screen: scikit-learn's classification report, then the other numbers."""
    import pandas as pd
    from sklearn.metrics import classification_report

    text = classification_report(
        y_true,
        probs.argmax(axis=1),
        labels=list(range(len(classes))),
        target_names=list(classes),
        digits=4,
        zero_division=0,
    )
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    lines = [
        text.rstrip(),
        "",
        f"ROC-AUC            {auc}  ({m['roc_auc_note']})",
        f"log loss           {m['log_loss']:.4f}",
        f"calibration error  {m['calibration_error']:.4f}  ({m['calibration_error_note']})",
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        pd.DataFrame(m["confusion_matrix"], index=list(classes), columns=list(classes)).to_string(),
    ]
    return "\n".join(lines)


@click.command(short_help="Metrics table, metrics.json and PNG plots of a saved model.")
@model_and_data_options
@click.option("--target", help="Label column (default: the one the model was trained on).")
@click.option(
    "--split",
    type=click.Choice(["auto", "all", "val", "train"]),
    default="auto",
    show_default=True,
    help="Which rows: val/train = the training run's split (needs the same data); all = "
    "every row; auto = val when the data is the training data, else all.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for metrics.json and the plots (default: MODEL/evaluation).",
)
def evaluate(model_dir: str, source: str, target: str | None, split: str, out: str | None) -> None:
    """Measure a saved model on labelled data: table on screen, JSON and PNG plots on disk.

    Reports accuracy; precision, recall and F1 per class and their macro and weighted averages;
    ROC-AUC (binary, or one-vs-rest macro for several classes); log loss; expected calibration
    error; the confusion matrix. Writes metrics.json, loss_curve.png (from training),
    roc_curve.png, confusion_matrix.png and calibration.png into --out.

    \b
    Examples:
      crossent evaluate --model runs/bc --data breast-cancer            held-out rows
      crossent evaluate --model runs/bc --data breast-cancer --split all
      crossent evaluate --model runs/p --data new_patients.csv
    """
    import numpy as np

    from . import data as data_mod
    from . import models, plots, store

    model, config = store.load_model(model_dir)
    classes = config["classes"]
    ds = data_mod.load_for_model(
        source, config["features"], target or config.get("target"), need_target=True
    )
    y = data_mod.encode_labels(ds.labels or [], classes, ds.name)

    training = config.get("training", {})
    same_data = ds.fingerprint() == training.get("data_sha256")
    if split == "auto":
        split = "val" if same_data and training.get("val_rows") else "all"
    rows = np.arange(len(y))
    if split != "all":
        if not same_data:
            raise CliError(
                f"--split {split} needs the data the model was trained on ({training.get('data')}), "
                f"but {ds.name} differs; use --split all"
            )
        train_rows, val_rows = data_mod.split_indices(y, training["val_split"], training["seed"])
        rows = val_rows if split == "val" else train_rows
        if len(rows) == 0:
            raise CliError("the training run held out no validation rows; use --split all or train")
    scope = {"all": "all", "val": "the held-out validation", "train": "the training"}[split]

    probs = models.probabilities(model, models.scale(ds.X[rows], config["scaling"]), config["task"])
    m = compute_metrics(y[rows], probs, classes)
    m = {"model": str(model_dir), "data": ds.name, "split": split, **m}

    folder = Path(out) if out else Path(model_dir) / "evaluation"
    from . import _files

    click.echo(f"{ds.name}: {scope} rows ({len(rows)}), model {model_dir}\n")
    click.echo(report(y[rows], probs, classes, m))
    _files.write_json(folder / "metrics.json", m)
    title = f"{Path(model_dir).name} on {Path(ds.name).name} ({split})"
    written = ["metrics.json"]
    history = config.get("history") or []
    if history:
        plots.loss_curves(
            {
                "training": [h["train_loss"] for h in history],
                "validation": [h.get("val_loss") for h in history],
            },
            folder / "loss_curve.png",
            f"{Path(model_dir).name}: loss per epoch",
        )
        written.append("loss_curve.png")
    if len(np.unique(y[rows])) >= 2:
        plots.roc(y[rows], probs, classes, folder / "roc_curve.png", f"ROC: {title}")
        written.append("roc_curve.png")
    plots.confusion(
        y[rows],
        probs.argmax(axis=1),
        classes,
        folder / "confusion_matrix.png",
        f"Confusion matrix: {title}",
    )
    plots.calibration(y[rows], probs, folder / "calibration.png", f"Calibration: {title}")
    written += ["confusion_matrix.png", "calibration.png"]
    click.echo(f"\nwrote {folder}/ ({', '.join(written)})")
