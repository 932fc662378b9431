"""`crossent train`: the command's options and help; the fitting is `fitting.fit`.

Option defaults come from `config.FitOptions` (written once there); the text options click cannot
check alone (--hidden, --class-weight, --features, the column options) are parsed in
`train_options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .config import KEEP, OPTIMIZERS, SCHEDULES, FitOptions
from .data import DATA_HELP
from .train_options import column_options, csv_list, parse_hidden

DEFAULTS = FitOptions()


def _options(command: Any) -> Any:
    """The model, optimizer and stopping options of `crossent train`, defaults from FitOptions."""
    d = DEFAULTS
    specs = [
        ("--model", "kind", dict(type=click.Choice(["linear", "mlp"]), default=d.kind,
         help="linear: logits = W x + b. mlp: hidden layers with ReLU.")),
        ("--hidden", "hidden", dict(default=",".join(map(str, d.hidden)),
         help="MLP hidden widths, e.g. 128,64.")),
        ("--task", "task", dict(type=click.Choice(["auto", "binary", "multiclass"]), default=d.task,
         help="binary: one logit, sigmoid + BCE-with-logits. multiclass: one logit per class, "
         "softmax + cross-entropy. auto: binary for two classes.")),
        ("--epochs", "epochs", dict(type=click.IntRange(min=1), default=None,
         help="Train exactly this many epochs. Default: until the validation loss has not "
         "improved for --patience epochs, at most ~20000 steps (20 to 2000 epochs).")),
        ("--patience", "patience", dict(type=click.IntRange(min=1), default=None,
         help="Epochs without improvement before stopping (default: ~600 steps' worth, >= 10).")),
        ("--schedule", "schedule", dict(type=click.Choice(SCHEDULES), default=d.schedule,
         help="plateau: halve the learning rate when the validation loss stalls.")),
        ("--keep-epoch", "keep_epoch", dict(type=click.Choice(KEEP), default=d.keep_epoch,
         help="Save the weights of the epoch with the lowest validation loss, or the last.")),
        ("--lr", "lr", dict(type=click.FloatRange(min=0, min_open=True), default=d.lr,
         help="Learning rate.")),
        ("--batch-size", "batch_size", dict(type=click.IntRange(min=1), default=d.batch_size)),
        ("--optimizer", "optimizer", dict(type=click.Choice(OPTIMIZERS), default=d.optimizer)),
        ("--momentum", "momentum", dict(type=click.FloatRange(0, 1), default=d.momentum,
         help="SGD momentum.")),
        ("--weight-decay", "weight_decay", dict(type=click.FloatRange(min=0), default=d.weight_decay)),
        ("--label-smoothing", "label_smoothing", dict(type=click.FloatRange(0, 1, max_open=True),
         default=d.label_smoothing, help="eps: the target becomes (1 - eps) * one-hot + eps / classes.")),
        ("--class-weight", "class_weight", dict(default=None,
         help="balanced (n / (classes * n_class)), weights in class order (1,3), or per name "
         "(malignant=3). Weighted mean: sum w[y] * loss / sum w[y].")),
        ("--val-split", "val_split", dict(type=click.FloatRange(0, 1, max_open=True),
         default=d.val_split, help="Fraction of rows held out for validation (stratified when "
         "every class allows it; train says when not).")),
        ("--seed", "seed", dict(type=int, default=d.seed,
         help="Seeds the split, the initial weights and the batch order.")),
        ("--threads", "threads", dict(type=click.IntRange(min=1), default=d.threads,
         help="Torch threads. These small models train fastest on one; raise it for large "
         "--batch-size and --hidden.")),
    ]  # fmt: skip
    for name, dest, kw in reversed(specs):
        show = kw.get("default") is not None
        command = click.option(name, dest, show_default=show, **kw)(command)
    return command


def _table(source: str, options: dict[str, Any]) -> Any:
    """The table to train on (its data options popped from `options`), notices on stderr."""
    from . import data as data_mod

    table = data_mod.load_for_training(
        source,
        options.pop("target"),
        csv_list(options.pop("features")) or None,
        sep=options.pop("sep"),
        classification=options.pop("classification"),
        **{k: options.pop(k) for k in ("drop", "keep", "categorical", "numeric", "dates")},
    )
    for line in table.plan.notices + ([table.fmt.note] if table.fmt and table.fmt.note else []):
        click.echo(line, err=True)
    return table


@click.command(short_help="Train a classifier; save it as safetensors + JSON.")
@click.option("--data", "source", required=True, metavar="FILE|NAME", help=DATA_HELP)
@click.option("--target", help="Label column of the table (not needed for built-ins).")
@click.option("--features", help="Comma-separated feature columns (default: every other column).")
@click.option(
    "--classification",
    is_flag=True,
    help="Treat a numeric target with many values (or one per row) as classes anyway.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Model folder to write (default: runs/<data name>).",
)
@_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in --out from its last checkpoint (same options; "
    "--epochs may grow).",
)
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
@column_options
def train(**options: Any) -> None:
    """Train a classifier on a table or a built-in data set and save it as a model folder.

    The task follows the labels: two classes train one logit with sigmoid + crossent's
    BCE-with-logits, more classes train one logit per class with softmax + crossent's
    cross-entropy (override with --task). A numeric target with many distinct values (a
    quantity, not classes) or one value per row (an id) is refused unless --classification.

    Training runs until the validation loss has not improved for --patience epochs (at most
    ~20000 steps), halving the learning rate when it stalls, and keeps the weights of the epoch
    with the lowest validation loss; the run says which epoch and why it stopped, and the loss
    curve marks it. --epochs N trains exactly N epochs instead.

    Columns become features as a scikit-learn pipeline would make them, learned on the training
    rows only and saved with the model as JSON: numbers are imputed (median) and standardised
    (text like '197,608', '$1.5' or '12%' is read as numbers, with a note); text, bool and
    --categorical columns are one-hot encoded (at most --max-categories columns each, rarer
    categories share an 'other' column; a missing value is its own category when training rows
    have some); dates become year, month and day of week. A column that is unique per row or
    grows with the row number (an id) is left out with a note (--keep COL keeps it); a column
    with no values, or one that copies the target, is refused.

    The folder gets model.safetensors, config.json (architecture, input columns and their
    fitted preprocessing, classes, options, history), loss_curve.png and checkpoint.safetensors
    (rewritten atomically every few seconds and at the end). If a run is interrupted, run the
    same command again with --resume.

    \b
    Examples:
      crossent train --data breast-cancer --out runs/bc
      crossent train --data digits --model linear --epochs 20 --label-smoothing 0.1
      crossent train --data patients.xlsx --target diagnosis --class-weight balanced
      crossent train --data patients.csv.gz --target diagnosis --resume
      crossent train --data penguins.parquet --target species --categorical year --drop sex
    """
    from . import fitting

    source, out = options.pop("source"), options.pop("out")
    flags = {k: options.pop(k) for k in ("resume", "overwrite", "quiet")}
    table = _table(source, options)
    hidden = options.pop("hidden")
    opts = FitOptions(
        **options, hidden=tuple(parse_hidden(hidden)) if options["kind"] == "mlp" else ()
    )
    folder = Path(out) if out else Path("runs") / Path(table.name).stem
    fitting.fit(table, opts, folder, **flags)
    click.echo(f"saved {folder}/ (model.safetensors, config.json, loss_curve.png)")
    if not flags["quiet"]:
        click.echo(f"next: crossent evaluate --model {folder} --data {source}")
