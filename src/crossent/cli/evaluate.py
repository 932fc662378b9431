"""`crossent evaluate`: metrics of a saved model on labelled data, a JSON file, CSV tables, plots.

The numbers and the report are `metrics`' (scikit-learn's metrics, plus the few it cannot give
at thousands of classes). What stays bounded as the classes grow: the screen (the largest
classes, the most confused pairs), metrics.json (no C x C matrix past `DENSE_CONFUSION_MAX`),
the confusion-matrix plot (drawn up to `CONFUSION_PLOT_MAX` classes) and the ROC plot (the
`ROC_PLOT_CLASSES` largest classes, one-vs-rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._errors import CliError
from .data import model_and_data_options
from .metrics import (  # noqa: F401 - calibration_error and compute_metrics are used by demo/tests
    calibration_error,
    compute_metrics,
    report,
    tables,
)

CONFUSION_PLOT_MAX = 30  # classes: beyond this the cells are too small to read
ROC_PLOT_CLASSES = 10


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
def evaluate(
    model_dir: str, source: str, sep: str | None, target: str | None, split: str, out: str | None
) -> None:
    """Measure a saved model on labelled data: table on screen, JSON, CSV and PNG files on disk.

    Reports accuracy; top-k accuracy (k = 3, 5, 10 below the number of classes); precision,
    recall and F1 per class and their macro and weighted averages; ROC-AUC (binary, or
    one-vs-rest macro up to 100 classes); log loss; expected calibration error; the confusion
    matrix. Writes metrics.json, per_class.csv, loss_curve.png (from training), roc_curve.png,
    confusion_matrix.png (up to 30 classes) and calibration.png into --out. With many classes the
    screen shows the 20 largest and the most confused pairs, and the confusion matrix's non-zero
    cells go to confusion_pairs.csv.

    \b
    Examples:
      crossent evaluate --model runs/bc --data breast-cancer            held-out rows
      crossent evaluate --model runs/bc --data breast-cancer --split all
      crossent evaluate --model runs/p --data new_patients.csv
    """
    from . import _files, models, store
    from . import data as data_mod

    model, config = store.load_model(model_dir)
    classes = config["classes"]
    ds = data_mod.model_source(
        config, source, target or config.get("target"), need_target=True, sep=sep
    )
    y = data_mod.encode_labels(ds.labels or [], classes, ds.name)
    split, rows = _rows(config, ds, y, split)
    scope = {"all": "all", "val": "the held-out validation", "train": "the training"}[split]
    X, inputs = data_mod.model_inputs(config, ds, rows)
    for line in inputs.lines():
        click.echo(line, err=True)

    probs = models.probabilities(model, X, config["task"])
    m = compute_metrics(y[rows], probs, classes)
    m = {"model": str(model_dir), "data": ds.name, "split": split, **m, "inputs": inputs.as_json()}

    folder = Path(out) if out else Path(model_dir) / "evaluation"
    click.echo(f"{ds.name}: {scope} rows ({len(rows)}), model {model_dir}\n")
    click.echo(report(y[rows], probs, classes, m))
    _files.write_json(folder / "metrics.json", m)
    written = ["metrics.json"]
    for name, text in tables(y[rows], probs, classes, m).items():
        _files.write_text(folder / name, text)
        written.append(name)
    title = f"{Path(model_dir).name} on {Path(ds.name).name} ({split})"
    written += _plots(config, y[rows], probs, folder, title, Path(model_dir).name)
    click.echo(f"\nwrote {folder}/ ({', '.join(written)})")


def _rows(config: dict, ds: Any, y: Any, split: str) -> tuple[str, Any]:
    """(the split evaluated, its row indices): --split auto resolved; val/train recomputed
    from the training run's seed and fraction, on the same data only."""
    import numpy as np

    from . import data as data_mod

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
        train_rows, val_rows, _ = data_mod.split_indices(y, training["val_split"], training["seed"])
        rows = val_rows if split == "val" else train_rows
        if len(rows) == 0:
            raise CliError("the training run held out no validation rows; use --split all or train")
    return split, rows


def _plots(config: dict, y: Any, probs: Any, folder: Path, title: str, name: str) -> list[str]:
    """loss_curve.png (from training, the kept epoch marked), roc_curve.png,
    confusion_matrix.png and calibration.png, as far as the classes allow; the files written."""
    import numpy as np

    from . import plots

    classes, written = config["classes"], []
    history = config.get("history") or []
    if history:
        kept = (config.get("training") or {}).get("kept_epoch")
        plots.loss_curves(
            {
                "training": [h["train_loss"] for h in history],
                "validation": [h.get("val_loss") for h in history],
            },
            folder / "loss_curve.png",
            f"{name}: loss per epoch",
            mark=(kept, f"kept: epoch {kept}") if kept else None,
        )
        written.append("loss_curve.png")
    if len(np.unique(y)) >= 2:
        shown = None
        if len(classes) > ROC_PLOT_CLASSES:  # the largest classes; 2000 curves are unreadable
            shown = np.argsort(-np.bincount(y, minlength=len(classes)), kind="stable")
            shown = sorted(int(c) for c in shown[:ROC_PLOT_CLASSES])
        plots.roc(y, probs, classes, folder / "roc_curve.png", f"ROC: {title}", shown)
        written.append("roc_curve.png")
    if len(classes) <= CONFUSION_PLOT_MAX:
        plots.confusion(
            y, probs.argmax(axis=1), classes, folder / "confusion_matrix.png",
            f"Confusion matrix: {title}",
        )  # fmt: skip
        written.append("confusion_matrix.png")
    plots.calibration(y, probs, folder / "calibration.png", f"Calibration: {title}")
    written.append("calibration.png")
    return written
