"""What a training run is, written once: its options, its resolved record, and its config.json.

    FitOptions     every option that decides a run's numbers, with the defaults `crossent train`
                   and the Python API share (the click options are declared from these defaults)
    run_record     the options resolved against the data (task, classes, class weights,
                   architecture, the stopping rule): the dict `--resume` compares with the
                   checkpoint's, and the "training" section of config.json
    model_config   the one place that lists config.json's keys; `train` and `demo` write through it

config.json (read back by `store.read_config`):

    task, architecture, features        what the model is and which input columns it reads
    scaling                             numeric-only models: mean and scale (format version 1)
    preprocessing                       the fitted column transforms (`preprocess`), as JSON
    target, classes                     the label column and the class names, in logit order
    training                            run_record + epochs, rows, best epoch, why it stopped
    history                             per epoch: train_loss, val_loss, val_accuracy, lr
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "none")
KEEP = ("best", "last")
# run_record keys that config.json keeps at its top level rather than under "training"
TOP_LEVEL = ("architecture", "classes", "features", "task", "target")


@dataclass(frozen=True)
class FitOptions:
    """A training run's options. `epochs` None: the default budget (`stopping.budget`: until the
    validation loss stops improving, capped); a number trains exactly that many epochs."""

    kind: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    task: str = "auto"
    epochs: int | None = None
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    class_weight: str | None = None
    val_split: float = 0.2
    seed: int = 0
    patience: int | None = None  # None: from the budget; early stopping only without --epochs
    schedule: str = "plateau"
    keep_epoch: str = "best"
    max_categories: int = 20
    threads: int = 1  # speed only: not part of the record

    def defaults(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Resolved:
    """FitOptions resolved against one table."""

    task: str
    classes: list[str]
    class_weights: list[float] | None
    architecture: dict[str, Any]
    max_epochs: int
    patience: int | None  # early stopping's; None with --epochs
    plateau: int  # the patience the schedule is derived from
    columns: dict[str, str] | None = None  # feature kinds, when not all numeric


def run_record(opts: FitOptions, res: Resolved, data: dict[str, Any]) -> dict[str, Any]:
    """What must match for --resume to continue the same computation.

    `data`: {data, data_sha256, target, features}. The epoch budget is left out on purpose:
    `--resume --epochs N` may extend a run."""
    run = {
        **data,
        "classes": res.classes,
        "task": res.task,
        "architecture": res.architecture,
        "optimizer": opts.optimizer,
        "lr": opts.lr,
        "momentum": opts.momentum,
        "weight_decay": opts.weight_decay,
        "batch_size": opts.batch_size,
        "label_smoothing": opts.label_smoothing,
        "class_weights": res.class_weights,
        "val_split": opts.val_split,
        "seed": opts.seed,
        "patience": res.patience,
        "schedule": opts.schedule,
        "keep_epoch": opts.keep_epoch,
    }
    if res.columns is not None:  # (kept out of numeric runs, as in their first checkpoints)
        run.update(columns=res.columns, max_categories=opts.max_categories)
    return run


def model_config(
    *,
    task: str,
    architecture: dict[str, Any],
    features: list[str],
    target: str,
    classes: list[str],
    training: dict[str, Any],
    history: list[dict[str, Any]],
    preprocessing: dict[str, Any] | None = None,
    scaling: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """config.json's content (without the format fields `store.save_model` adds).

    `scaling` is derived from `preprocessing` when every column is plain numeric (what a crossent
    that predates "preprocessing" reads) unless given (the demo's raw inputs)."""
    if scaling is None and preprocessing is not None and numeric_only(preprocessing):
        cols = preprocessing["columns"]
        scaling = {"mean": [c["mean"] for c in cols], "scale": [c["scale"] for c in cols]}
    config: dict[str, Any] = {"task": task, "architecture": architecture, "features": features}
    if scaling is not None:
        config["scaling"] = scaling
    if preprocessing is not None:
        config["preprocessing"] = preprocessing
    config.update({"target": target, "classes": classes, "training": training, "history": history})
    return config


def numeric_only(preprocessing: dict[str, Any]) -> bool:
    """Every column plain numbers: a version-1 reader (scaling only) reads the model right."""
    return all(c["kind"] == "numeric" and "text_numbers" not in c for c in preprocessing["columns"])


def training_section(run: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """config.json's "training": the run record less its top-level keys, plus the outcome."""
    return {**{k: v for k, v in run.items() if k not in TOP_LEVEL}, **outcome}
