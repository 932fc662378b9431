"""`crossent train`: fit a linear or MLP classifier with crossent's losses, checkpointed, resumable.

Flow: load + check data, plan the feature columns (`columns`) -> class indices ->
train/validation split (seeded, stratified when possible, else said why) -> preprocessing fitted
on the training rows (`preprocess`: impute, one-hot, standardise) -> model + optimizer -> epochs
(mini-batches in a seeded shuffled order; a checkpoint after every epoch) -> model folder + loss
curve.

Resuming: the checkpoint holds the model, the optimizer state and the shuffling generator's state,
so a run stopped after k epochs and resumed computes exactly what an uninterrupted run computes
(tests/cli check the final probabilities are equal). The checkpoint also records a fingerprint of
the data and options; --resume with different ones is refused rather than silently mixed.

This module is the command: its options and the flow above. The parsing of --hidden,
--class-weight and --features is in `train_options`, the epochs in `training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import training
from ._errors import CliError
from .data import DATA_HELP
from .train_options import column_options, csv_list, parse_class_weights, parse_hidden


@click.command(short_help="Train a classifier; save it as safetensors + JSON.")
@click.option("--data", "source", required=True, metavar="CSV|NAME", help=DATA_HELP)
@click.option("--target", help="Label column of the CSV file (not needed for built-ins).")
@click.option("--features", help="Comma-separated feature columns (default: every other column).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Model folder to write (default: runs/<data name>).",
)
@click.option(
    "--model",
    "kind",
    type=click.Choice(["linear", "mlp"]),
    default="mlp",
    show_default=True,
    help="linear: logits = W x + b. mlp: hidden layers with ReLU.",
)
@click.option("--hidden", default="64", show_default=True, help="MLP hidden widths, e.g. 128,64.")
@click.option(
    "--task",
    type=click.Choice(["auto", "binary", "multiclass"]),
    default="auto",
    show_default=True,
    help="binary: one logit, sigmoid + BCE-with-logits. multiclass: one logit per class, "
    "softmax + cross-entropy. auto: binary for two classes.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Learning rate.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--optimizer", type=click.Choice(training.OPTIMIZERS), default="adam", show_default=True
)
@click.option(
    "--momentum", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="SGD momentum."
)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="eps: the target becomes (1 - eps) * one-hot + eps / classes.",
)
@click.option(
    "--class-weight",
    "class_weight",
    help="balanced (n / (classes * n_class)), weights in class order (1,3), or "
    "per name (malignant=3). Weighted mean: sum w[y] * loss / sum w[y].",
)
@click.option(
    "--val-split",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of rows held out for validation (stratified when every class allows it; "
    "train says when not).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds the split, the initial weights and the batch order.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in --out from its last checkpoint (same options; "
    "--epochs may grow).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Torch threads. These small models train fastest on one; raise it for large "
    "--batch-size and --hidden.",
)
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
@click.option(
    "--stop-after-epochs",
    type=click.IntRange(min=1),
    hidden=True,
    help="Test hook: stop after this epoch as if interrupted (checkpoint written).",
)
@column_options
def train(
    source: str,
    target: str | None,
    features: str | None,
    out: str | None,
    kind: str,
    hidden: str,
    task: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    momentum: float,
    weight_decay: float,
    label_smoothing: float,
    class_weight: str | None,
    val_split: float,
    seed: int,
    resume: bool,
    threads: int,
    overwrite: bool,
    quiet: bool,
    stop_after_epochs: int | None,
    **columns: Any,
) -> None:
    """Train a classifier on a CSV file or a built-in data set and save it as a model folder.

    The task follows the labels: two classes train one logit with sigmoid + crossent's
    BCE-with-logits, more classes train one logit per class with softmax + crossent's
    cross-entropy (override with --task).

    Columns become features as a scikit-learn pipeline would make them, learned on the training
    rows only and saved with the model as JSON: numbers are imputed (median) and standardised;
    text, bool and --categorical columns are one-hot encoded (at most --max-categories columns
    each, rarer categories share an 'other' column; a missing value is its own category when
    training rows have some); dates become year, month and day of week. A column that is unique
    per row or grows with the row number (an id) is left out with a note (--keep COL keeps it);
    a column with no values, or one that copies the target, is refused.

    The folder gets model.safetensors, config.json (architecture, input columns and their
    fitted preprocessing, classes, options, history), loss_curve.png and checkpoint.safetensors
    (rewritten atomically after every epoch). If a run is interrupted, run the same command again
    with --resume.

    \b
    Examples:
      crossent train --data breast-cancer --out runs/bc
      crossent train --data digits --model linear --epochs 20 --label-smoothing 0.1
      crossent train --data patients.csv --target diagnosis --class-weight balanced
      crossent train --data patients.csv --target diagnosis --resume
      crossent train --data penguins.csv --target species --categorical year --drop sex
    """
    import torch

    from . import data as data_mod
    from . import models, plots, preprocess, store

    # --- data -------------------------------------------------------------------------------
    max_categories, sep = columns.pop("max_categories"), columns.pop("sep")
    ds = data_mod.load_for_training(source, target, csv_list(features) or None, sep=sep, **columns)
    for line in ds.plan.notices:
        click.echo(line, err=True)
    classes = list(ds.class_order)
    y = data_mod.encode_labels(ds.labels, classes, ds.name)
    if task == "auto":
        task = "binary" if len(classes) == 2 else "multiclass"
    elif task == "binary" and len(classes) != 2:
        raise CliError(
            f"--task binary needs two classes, but '{ds.target}' has {len(classes)}; "
            "use --task multiclass or auto"
        )
    weights = parse_class_weights(class_weight, classes, y)
    widths = parse_hidden(hidden) if kind == "mlp" else []
    train_rows, val_rows, not_stratified = data_mod.split_indices(y, val_split, seed)
    if not_stratified:
        click.echo(f"note: the validation split is random, not stratified: {not_stratified}", err=True)
    spec = preprocess.fit(ds.frame.iloc[train_rows], ds.plan, ds.name, max_categories)
    X, filled = preprocess.transform(spec, ds.frame, ds.name)
    if not quiet:
        for line in filled.lines():
            click.echo(line, err=True)
    numeric_only = all(kind == "numeric" for kind in ds.plan.kinds.values())

    def tensors(rows: Any) -> tuple[Any, Any]:
        return torch.as_tensor(X[rows], dtype=torch.float32), torch.as_tensor(y[rows])

    x_tr, y_tr = tensors(train_rows)
    x_va, y_va = tensors(val_rows)

    # --- model, loss, optimizer, RNG --------------------------------------------------------
    arch = models.architecture(kind, X.shape[1], len(classes), task, widths)
    torch.manual_seed(seed)  # initial weights
    model = models.build(arch)
    loss_fn = models.make_loss(task, weights, label_smoothing)
    opt = training.make_optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
    rng = torch.Generator().manual_seed(seed)  # batch order, saved in every checkpoint

    run = {  # everything that must match for --resume to continue the same computation
        "data": ds.name,
        "data_sha256": ds.fingerprint(),
        "target": ds.target,
        "features": ds.plan.features,
        "classes": classes,
        "task": task,
        "architecture": arch,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "label_smoothing": label_smoothing,
        "class_weights": weights,
        "val_split": val_split,
        "seed": seed,
    }
    if not numeric_only:  # (kept out of numeric runs: their checkpoints predate these keys)
        run.update(columns=ds.plan.kinds, max_categories=max_categories)

    folder = Path(out) if out else Path("runs") / Path(ds.name).stem
    ckpt = folder / store.CHECKPOINT_FILE
    history: list[dict[str, Any]] = []
    start = 0
    if resume:
        if not ckpt.exists():
            raise CliError(f"there is no checkpoint in '{folder}' to resume; run without --resume")
        meta = store.load_checkpoint(ckpt, model, opt, rng)
        changed = [k for k in run if meta.get("run", {}).get(k) != run[k]]
        if changed:
            raise CliError(
                f"the checkpoint in '{folder}' was made with different {', '.join(changed)}; "
                "resume with the original data and options, or start over with --overwrite"
            )
        start, history = int(meta["epoch"]), list(meta["history"])
        if start > epochs:
            raise CliError(
                f"the checkpoint in '{folder}' is at epoch {start}, past --epochs {epochs}; "
                f"resume with --epochs {start} or more"
            )
    elif not overwrite and (ckpt.exists() or (folder / store.CONFIG_FILE).exists()):
        raise CliError(
            f"'{folder}' already holds a training run; continue it with --resume, "
            "start over with --overwrite, or choose another --out"
        )

    if not quiet:
        shape = " -> ".join(
            str(n) for n in [arch["in_features"], *arch["hidden"], arch["out_features"]]
        )
        head = "sigmoid + BCE-with-logits" if task == "binary" else "softmax + cross-entropy"
        n_cols = len(ds.plan.features)
        encoded = "" if numeric_only else f"{n_cols} columns -> {X.shape[1]} features; "
        click.echo(
            f"{ds.name}: {len(train_rows)} training rows, {len(val_rows)} validation rows, "
            f"{len(classes)} classes ({task}: {head}); {encoded}{kind} {shape}"
        )
        if start:
            click.echo(f"resuming from the checkpoint of epoch {start}")

    # --- epochs -------------------------------------------------------------------------------
    with models.torch_threads(threads):
        finished = training.run_epochs(
            model=model,
            opt=opt,
            loss_fn=loss_fn,
            rng=rng,
            train=(x_tr, y_tr),
            val=(x_va, y_va),
            task=task,
            batch_size=batch_size,
            start=start,
            epochs=epochs,
            history=history,
            ckpt=ckpt,
            run=run,
            quiet=quiet,
            stop_after_epochs=stop_after_epochs,
        )
    if not finished:  # stopped by --stop-after-epochs: the checkpoint is the result
        return

    # --- save ---------------------------------------------------------------------------------
    config: dict[str, Any] = {
        "task": task,
        "architecture": arch,
        "features": ds.plan.features,  # the input columns; "preprocessing" turns them into X
    }
    if numeric_only:  # what a crossent that predates "preprocessing" reads (format version 1)
        config["scaling"] = {
            "mean": [c["mean"] for c in spec["columns"]],
            "scale": [c["scale"] for c in spec["columns"]],
        }
    config.update({
        "preprocessing": spec,
        "target": ds.target,
        "classes": classes,
        "training": {
            **{
                k: v
                for k, v in run.items()
                if k not in ("architecture", "classes", "features", "task", "target")
            },
            "epochs": len(history),
            "train_rows": len(train_rows),
            "val_rows": len(val_rows),
        },
        "history": history,
    })
    store.save_model(folder, model, config)
    plots.loss_curves(
        {
            "training": [h["train_loss"] for h in history],
            "validation": [h["val_loss"] for h in history],
        },
        folder / "loss_curve.png",
        f"{ds.name}: {kind} classifier, crossent {'BCE' if task == 'binary' else 'cross-entropy'}",
    )
    last = history[-1]
    click.echo(training.progress_line(last, epochs))
    click.echo(f"saved {folder}/ ({store.MODEL_FILE}, {store.CONFIG_FILE}, loss_curve.png)")
    if not quiet:
        click.echo(f"next: crossent evaluate --model {folder} --data {source}")
