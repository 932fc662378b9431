"""Fitting a classifier to a table: the flow behind `crossent train` and `api.train`.

    prepare   labels -> class indices, the task, class weights, the train/validation split
              (seeded, stratified when possible, else said why), the preprocessing fitted on the
              training rows only (`preprocess`), float32 tensors
    build     model, loss, optimizer, RNG, schedule and stopping rule (`stopping`), the run record
    begin     a fresh run, or --resume from the checkpoint (refused when the record differs)
    epochs    `training.run_epochs`; then the best epoch's weights are restored
    save      model.safetensors, config.json (`config.model_config`), loss_curve.png with the
              best epoch marked

Resuming: the checkpoint holds the model, optimizer, shuffling generator, schedule, stopping
rule and best weights, so a run stopped after k epochs and resumed computes exactly what an
uninterrupted run computes (tests/cli check the weights are equal). It also records a
fingerprint of the data and the options; --resume with different ones is refused rather than
silently mixed. torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import training
from ._errors import CliError
from .config import FitOptions, Resolved, model_config, run_record, training_section
from .data import Table


@dataclass
class Prepared:
    """A table made ready for training: the rows of each split as tensors, and what it took."""

    table: Table
    res: Resolved
    train_rows: Any
    val_rows: Any
    spec: dict[str, Any]  # the fitted preprocessing
    n_features: int
    train: tuple[Any, Any]  # x (N, D) float32, y (N,) int64
    val: tuple[Any, Any]


@dataclass
class FitResult:
    folder: Path
    history: list[dict[str, Any]]
    kept_epoch: int  # the epoch whose weights were saved
    reason: str  # why training ended


def _task(task: str, classes: list[str], target: str) -> str:
    if task == "auto":
        return "binary" if len(classes) == 2 else "multiclass"
    if task == "binary" and len(classes) != 2:
        raise CliError(
            f"--task binary needs two classes, but '{target}' has {len(classes)}; "
            "use --task multiclass or auto"
        )
    return task


def prepare(table: Table, opts: FitOptions, quiet: bool) -> Prepared:
    """Everything before the model: classes, split, preprocessing, tensors (see the module)."""
    import torch

    from . import data as data_mod
    from . import models, preprocess, stopping
    from .train_options import parse_class_weights

    classes = list(table.class_order)
    y = data_mod.encode_labels(table.labels, classes, table.name)
    task = _task(opts.task, classes, table.target)
    weights = parse_class_weights(opts.class_weight, classes, y)
    train_rows, val_rows, not_stratified = data_mod.split_indices(y, opts.val_split, opts.seed)
    if not_stratified:
        click.echo(
            f"note: the validation split is random, not stratified: {not_stratified}", err=True
        )
    spec = preprocess.fit(table.frame.iloc[train_rows], table.plan, table.name, opts.max_categories)
    X, filled = preprocess.transform(spec, table.frame, table.name)
    if not quiet:
        for line in filled.lines():
            click.echo(line, err=True)
    max_epochs, patience = stopping.budget(len(train_rows), opts.batch_size)
    if opts.patience is not None:
        patience = opts.patience
    numeric_only = all(kind == "numeric" for kind in table.plan.kinds.values())
    hidden = list(opts.hidden) if opts.kind == "mlp" else []
    res = Resolved(
        task=task,
        classes=classes,
        class_weights=weights,
        architecture=models.architecture(opts.kind, X.shape[1], len(classes), task, hidden),
        max_epochs=opts.epochs or max_epochs,
        patience=None if opts.epochs else patience,
        plateau=patience,
        columns=None if numeric_only else table.plan.kinds,
    )

    def tensors(rows: Any) -> tuple[Any, Any]:
        return torch.as_tensor(X[rows], dtype=torch.float32), torch.as_tensor(y[rows])

    return Prepared(
        table, res, train_rows, val_rows, spec, X.shape[1], tensors(train_rows), tensors(val_rows)
    )


def build(prep: Prepared, opts: FitOptions, folder: Path, quiet: bool) -> training.Loop:
    """Model (seeded), loss, optimizer, shuffling RNG, schedule, stopping rule: the Loop."""
    import torch

    from . import models, stopping, store

    res, table = prep.res, prep.table
    torch.manual_seed(opts.seed)  # initial weights
    model = models.build(res.architecture)
    opt = training.make_optimizer(
        opts.optimizer, model.parameters(), opts.lr, opts.weight_decay, opts.momentum
    )
    data = {
        "data": table.name,
        "data_sha256": table.fingerprint(),
        "target": table.target,
        "features": table.plan.features,
    }
    monitor = "val_loss" if len(prep.val_rows) else "train_loss"
    return training.Loop(
        model=model,
        opt=opt,
        loss_fn=models.make_loss(res.task, res.class_weights, opts.label_smoothing),
        rng=torch.Generator().manual_seed(opts.seed),  # batch order, saved in every checkpoint
        scheduler=stopping.plateau_scheduler(opt, res.plateau, opts.schedule),
        stopping=stopping.EarlyStopping(res.patience, monitor),
        train=prep.train,
        val=prep.val,
        task=res.task,
        batch_size=opts.batch_size,
        max_epochs=res.max_epochs,
        forced=opts.epochs is not None,
        ckpt=folder / store.CHECKPOINT_FILE,
        run=run_record(opts, res, data),
        quiet=quiet,
    )


def begin(loop: training.Loop, folder: Path, resume: bool, overwrite: bool) -> list[dict[str, Any]]:
    """The history so far: [] for a fresh run, the checkpoint's for --resume (whose model,
    optimizer, RNG, schedule and stopping rule are restored into `loop`)."""
    from . import store

    if resume:
        if not loop.ckpt.exists():
            raise CliError(f"there is no checkpoint in '{folder}' to resume; run without --resume")
        meta = store.load_checkpoint(loop.ckpt, loop.model, loop.opt, loop.rng)
        changed = [k for k in loop.run if meta.get("run", {}).get(k) != loop.run[k]]
        if changed:
            raise CliError(
                f"the checkpoint in '{folder}' was made with different {', '.join(changed)}; "
                "resume with the original data and options, or start over with --overwrite"
            )
        start = int(meta["epoch"])
        if start > loop.max_epochs:
            raise CliError(
                f"the checkpoint in '{folder}' is at epoch {start}, past --epochs "
                f"{loop.max_epochs}; resume with --epochs {start} or more"
            )
        loop.restore(meta)
        return list(meta["history"])
    if not overwrite and (loop.ckpt.exists() or (folder / store.CONFIG_FILE).exists()):
        raise CliError(
            f"'{folder}' already holds a training run; continue it with --resume, "
            "start over with --overwrite, or choose another --out"
        )
    return []


def header_lines(prep: Prepared, loop: training.Loop, opts: FitOptions, start: int) -> list[str]:
    """The lines train prints before the epochs: data, task, model, budget."""
    res, arch, table = prep.res, prep.res.architecture, prep.table
    shape = " -> ".join(
        str(n) for n in [arch["in_features"], *arch["hidden"], arch["out_features"]]
    )
    head = "sigmoid + BCE-with-logits" if res.task == "binary" else "softmax + cross-entropy"
    encoded = (
        ""
        if res.columns is None
        else f"{len(table.plan.features)} columns -> {prep.n_features} features; "
    )
    lines = [
        f"{table.name}: {len(prep.train_rows)} training rows, {len(prep.val_rows)} validation "
        f"rows, {len(res.classes)} classes ({res.task}: {head}); {encoded}{opts.kind} {shape}"
    ]
    what = "validation loss" if loop.stopping.monitor == "val_loss" else "training loss"
    if loop.forced:
        lines.append(f"{loop.max_epochs} epochs (--epochs)")
    else:
        lines.append(
            f"up to {loop.max_epochs} epochs, stopping when the {what} has not improved for "
            f"{res.patience} epochs (--epochs N trains exactly N)"
        )
    if start:
        lines.append(f"resuming from the checkpoint of epoch {start}")
    return lines


def fit(
    table: Table,
    opts: FitOptions,
    folder: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> FitResult:
    """Train on `table` with `opts` and save the model folder `folder` (see the module)."""
    from . import models

    prep = prepare(table, opts, quiet)
    loop = build(prep, opts, folder, quiet)
    history = begin(loop, folder, resume, overwrite)
    if not quiet:
        for line in header_lines(prep, loop, opts, len(history)):
            click.echo(line)
    with models.torch_threads(opts.threads):
        reason = training.run_epochs(loop, len(history), history)
    kept = training.keep_best(loop, opts.keep_epoch, len(history))
    save(prep, loop, folder, history, kept, reason)
    click.echo(training.progress_line(history[-1], loop.max_epochs))
    click.echo(reason)
    click.echo(_kept_line(history, kept, opts.keep_epoch))
    return FitResult(folder, history, kept, reason)


def _kept_line(history: list[dict[str, Any]], kept: int, keep: str) -> str:
    entry = history[kept - 1]
    if entry.get("val_loss") is None:
        return f"kept the weights of the last epoch ({kept}): no validation rows to choose by"
    which = "the lowest validation loss" if keep == "best" else "the last epoch, --keep-epoch last"
    return (
        f"kept the weights of epoch {kept} ({which}): validation loss {entry['val_loss']:.4f}, "
        f"accuracy {entry['val_accuracy']:.2%}"
    )


def save(
    prep: Prepared,
    loop: training.Loop,
    folder: Path,
    history: list[dict[str, Any]],
    kept: int,
    reason: str,
) -> None:
    """model.safetensors + config.json, and the loss curve with the kept epoch marked."""
    from . import plots, store

    table, res = prep.table, prep.res
    outcome = {
        "epochs": len(history),
        "max_epochs": loop.max_epochs,
        "kept_epoch": kept,
        "stopped": reason,
        "train_rows": len(prep.train_rows),
        "val_rows": len(prep.val_rows),
    }
    config = model_config(
        task=res.task,
        architecture=res.architecture,
        features=table.plan.features,  # the input columns; "preprocessing" turns them into X
        target=table.target,
        classes=res.classes,
        training=training_section(loop.run, outcome),
        history=history,
        preprocessing=prep.spec,
    )
    store.save_model(folder, loop.model, config)
    loss = "BCE" if res.task == "binary" else "cross-entropy"
    plots.loss_curves(
        {
            "training": [h["train_loss"] for h in history],
            "validation": [h["val_loss"] for h in history],
        },
        folder / "loss_curve.png",
        f"{table.name}: {res.architecture['kind']} classifier, crossent {loss}",
        mark=(kept, f"kept: epoch {kept}"),
    )
