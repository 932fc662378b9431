"""`crossent data`: list the built-in data sets, describe one, or describe a table file.

For a file: how it was read (CSV: delimiter, decimal, encoding, compression; Parquet, Excel,
JSON Lines), rows and columns, then one line
per column with the kind `train` would give it (numeric, categorical, date), its missing values,
its distinct values and what train would do about it (left out as a row id, refused because it
has no values or leaks the target), then the class balance of --target and whether the
validation split can be stratified. Output is bounded: at most `MAX_COLUMNS` column lines and
`MAX_CLASSES` class counts, with the number left out.
"""

from __future__ import annotations

from typing import Any

import click

from .data import BUILTINS
from .train_options import column_options

MAX_COLUMNS = 40
MAX_CLASSES = 20


@click.command("data", short_help="List the built-in data sets or describe one or a table file.")
@click.argument("source", required=False, metavar="[FILE|NAME]")
@click.option("--target", help="Label column of a CSV file: shows its class balance.")
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False),
    help="Write the data set to this CSV file (features, then the label column).",
)
@column_options
def data_command(source: str | None, target: str | None, export: str | None, **columns: Any):
    """List the built-in data sets, or describe one data set or table file before training on it.

    For a file (CSV, TSV, Parquet, Excel, JSON Lines, compressed CSV): how it was read, rows,
    and per column the kind train infers
    (numeric, categorical, date), missing values, distinct values, and what train does with it
    (row ids are left out, a column with no values or one that copies the target is refused).
    With --target: the class balance and whether the split can be stratified. The column
    options (--drop, --categorical, ...) work as in train. SOURCE: a file or a built-in name.

    \b
    Examples:
      crossent data                              the built-in data sets
      crossent data wine                         rows, features and class counts of one
      crossent data iris --export iris.csv       a built-in as a CSV file, to try the CSV path
      crossent data penguins.csv --target species
      crossent data export.csv --sep ';'         force the delimiter
    """
    if source is None:
        click.echo("Built-in data sets (from scikit-learn, offline):")
        for name, (_, about) in BUILTINS.items():
            click.echo(f"  {name:<14} {about}")
        click.echo(
            "Use one with --data NAME, or export it with `crossent data NAME --export FILE`."
        )
        return
    from . import data as data_mod

    frame, name, builtin_target, classes, fmt = data_mod.read_source(source, columns["sep"])
    if builtin_target is not None:
        _builtin(source, target, classes)
    else:
        _csv(frame, name, fmt, target, columns)
    if export:
        from . import _files

        _files.write_text(export, frame.to_csv(index=False))
        click.echo(f"wrote {export}")


def _builtin(source: str, target: str | None, classes: Any) -> None:
    from collections import Counter

    from . import data as data_mod

    table = data_mod.load_for_training(source, target)
    counts = Counter(table.labels)
    feats = table.plan.features
    click.echo(
        f"{table.name}: {len(table.frame)} rows, {len(feats)} numeric features, "
        f"target '{table.target}'"
    )
    click.echo("features: " + ", ".join(feats[:8]) + (" ..." if len(feats) > 8 else ""))
    click.echo("classes:  " + ", ".join(f"{c} ({counts[c]})" for c in table.class_order))


def _csv(frame: Any, name: str, fmt: Any, target: str | None, options: dict[str, Any]) -> None:
    from . import columns as cols
    from . import data as data_mod
    from ._errors import CliError
    from .target import check_classes

    click.echo(f"{name}: {len(frame)} rows, {frame.shape[1]} columns ({fmt.describe()})")
    if fmt.note:
        click.echo(fmt.note)
    labels, plan, problem = None, None, None
    try:  # a problem train would refuse is part of the description, not its end
        if target is not None:
            data_mod.check_target(frame, target, name)
            labels = data_mod.label_strings(frame, target, name)
            check_classes(frame, target, labels, name, options.get("classification", False))
            kw = {k: options[k] for k in ("drop", "keep", "categorical", "numeric", "dates")}
            plan = cols.plan_columns(frame, target, name, labels=labels, decimal=fmt.decimal, **kw)
    except CliError as e:
        if target not in frame.columns:
            raise
        problem = e.message
    width = min(max(len(c) for c in frame.columns), 28)
    click.echo(f"  {'column':<{width}}  {'kind':<11}  {'missing':>7}  {'distinct':>8}  train")
    shown = list(frame.columns)[:MAX_COLUMNS]
    for c in shown:
        col = frame[c]
        kind = "target" if c == target else cols.infer_kind(col, fmt.decimal)
        verdict = _verdict(c, col, target, plan, kind, options["max_categories"])
        click.echo(
            f"  {c[:width]:<{width}}  {kind:<11}  {int(col.isna().sum()):>7}  "
            f"{int(col.nunique()):>8}  {verdict}"
        )
    if frame.shape[1] > len(shown):
        click.echo(f"  ... and {frame.shape[1] - len(shown)} more columns")
    if problem:
        click.echo(f"train would refuse: {problem}")
    if target is not None:
        present = frame[target].dropna()
        _classes(
            frame, target, [cols.label(v) for v in present.tolist()], len(frame) - len(present)
        )


def _verdict(name: str, col: Any, target: str | None, plan: Any, kind: str, cap: int) -> str:
    from . import columns as cols
    from .preprocess import MIN_COVERED

    if name == target:
        return "label"
    if col.isna().all():
        return "refused: no values"
    if plan is not None:
        if name in plan.dropped:
            return f"left out: {plan.dropped[name]}"
        if name not in plan.kinds:
            return "not used"
        kind = plan.kinds[name]
        if name in plan.number_formats:
            return "feature (numbers with separators or signs)"
    else:
        reason = cols.id_reason(col) if kind != "date" else None
        if reason:
            return f"left out: {reason}"
    counts = col.dropna().map(cols.label).value_counts()
    if kind != "categorical" or len(counts) <= cap:
        return "feature"
    covered = counts.iloc[: cap - 1].sum() / max(1, len(col))
    if covered < MIN_COVERED:
        return f"refused: its {cap - 1} commonest values cover {covered:.0%} of rows"
    return f"feature ({cap - 1} commonest + other)"


def _classes(frame: Any, target: str, labels: list[str], missing: int) -> None:
    from collections import Counter

    import numpy as np

    from . import data as data_mod

    counts = Counter(labels)
    classes = data_mod.sorted_classes(frame, target, labels)
    by_size = sorted(classes, key=lambda c: -counts[c])
    gaps = f", {missing} rows without a label" if missing else ""
    click.echo(f"target '{target}': {len(classes)} classes{gaps}")
    width = min(40, max(24, *(len(c) for c in by_size[:MAX_CLASSES])))
    for c in by_size[:MAX_CLASSES]:
        click.echo(f"  {c[:width]:<{width}} {counts[c]:>7}  {counts[c] / len(labels):6.1%}")
    if len(classes) > MAX_CLASSES:
        rest = sum(counts[c] for c in by_size[MAX_CLASSES:])
        click.echo(f"  ... {len(classes) - MAX_CLASSES} smaller classes, {rest} rows")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in labels])
    _, _, why = data_mod.split_indices(y, 0.2, 0)
    click.echo(
        "the default validation split (20%) is stratified"
        if why is None
        else f"the default validation split (20%) cannot be stratified: {why}"
    )
