"""`crossent explain`: the loss of a few numbers, term by term, as the first seed works it out.

This module is the command: its options, and the checks that turn their text into rows, targets
and weights (a bad value ends with one sentence and exit code 2). The arithmetic, the text it
prints and the comparison with crossent's own result are in `explain_steps`.
"""

from __future__ import annotations

import math

import click

from ._errors import CliError
from .explain_steps import explain_binary, explain_multiclass


def _numbers(text: str, option: str) -> list[float]:
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a comma-separated list of numbers; write e.g. 0.2,0.7,0.1"
        )
    if not values:
        raise CliError(f"{option} is empty; give comma-separated numbers, e.g. 0.2,0.7,0.1")
    if not all(math.isfinite(v) for v in values):
        raise CliError(f"{option} {text!r} has a non-finite number; give finite numbers")
    return values


def _rows(text: str, option: str) -> list[list[float]]:
    rows = [_numbers(r, option) for r in text.split(";") if r.strip()]
    if not rows:
        raise CliError(f"{option} is empty; give comma-separated numbers, rows separated by ';'")
    if len({len(r) for r in rows}) != 1:
        raise CliError(
            f"the rows of {option} have different lengths; give every row one value per class"
        )
    if len(rows[0]) < 2:
        raise CliError(f"{option} needs at least two classes per row; give one value per class")
    return rows


def parse_target(
    text: str, n_rows: int, C: int
) -> tuple[list[int] | None, list[list[float]] | None, str | None]:
    """--target as (class indices, None) or (None, distributions), and how it was read.

    One value per row: class indices. C values per row (rows separated by ';', or N * C values
    in a row): a one-hot row is its class index (said in the note), any other row must be a
    probability distribution (values in [0, 1] summing to 1): a soft target."""
    parts = [r for r in text.split(";") if r.strip()]
    if len(parts) == 1:
        try:
            flat = _numbers(text, "--target")
        except CliError:
            raise CliError(f"--target {text!r} is not a list of class indices; write e.g. 1 or 1,0")
        if len(flat) == n_rows:
            if not all(v.is_integer() for v in flat):
                raise CliError(
                    f"--target {text!r} is not a list of class indices; write e.g. 1 or 1,0"
                )
            return [int(v) for v in flat], None, None
        if len(flat) != n_rows * C:
            raise CliError(
                f"--target has {len(flat)} values for {n_rows} row(s) of {C} classes; give class "
                f"indices, one per row (e.g. 1,0), or {C} probabilities per row (one-hot 0,1,0)"
            )
        rows = [flat[i * C : (i + 1) * C] for i in range(n_rows)]
    else:
        rows = [_numbers(r, "--target") for r in parts]
        if len(rows) != n_rows or any(len(r) != C for r in rows):
            raise CliError(
                f"--target has {len(rows)} rows for {n_rows}; give {C} probabilities in each of "
                f"{n_rows} rows separated by ';'"
            )
    return _distributions(text, rows)


def _distributions(
    text: str, rows: list[list[float]]
) -> tuple[list[int] | None, list[list[float]] | None, str]:
    for i, r in enumerate(rows, start=1):
        if any(not 0 <= v <= 1 for v in r) or abs(sum(r) - 1) > 1e-3:
            raise CliError(
                f"row {i} of --target ({', '.join(f'{v:g}' for v in r)}) is neither one class "
                "index nor a probability distribution (values in [0, 1] summing to 1); fix it"
            )
    if all(sorted(r)[-1] == 1 and sum(r) == 1 for r in rows):
        indices = [r.index(1) for r in rows]
        shown = ",".join(map(str, indices))
        return (
            indices,
            None,
            (
                f"--target {text} read as one-hot: class index {shown} "
                f"(the same as --target {shown})"
            ),
        )
    return (
        None,
        rows,
        (
            f"--target {text} read as class probabilities (soft targets, torch's probability "
            "targets): each row's loss weighs every class by its probability"
        ),
    )


def _binary(p_text, logit_text, y_text, weight, pos_weight, label_smoothing, reduction) -> None:
    """Check the binary options, then explain."""
    if (p_text is None) == (logit_text is None):
        raise CliError("--binary needs exactly one of --p (probabilities) or --logit; give one")
    if y_text is None:
        raise CliError("--binary needs the labels, e.g. --y 1; add --y")
    values = _numbers(p_text or logit_text, "--p" if p_text else "--logit")
    ys = _numbers(y_text, "--y")
    if len(ys) != len(values):
        raise CliError(f"--y has {len(ys)} labels for {len(values)} rows; give one label per row")
    if any(not 0 <= y <= 1 for y in ys):
        raise CliError("--y labels must lie in [0, 1] (1 = class 1); fix the labels")
    if p_text is not None and any(not 0 <= p <= 1 for p in values):
        raise CliError(
            "--p values are probabilities and must lie in [0, 1]; use --logit for raw scores"
        )
    if pos_weight is not None and p_text is not None:
        raise CliError("--pos-weight is an option of BCE-with-logits; give --logit instead of --p")
    v = _numbers(weight, "--weight") if weight else None
    if v is not None and len(v) not in (1, len(values)):
        raise CliError(f"--weight has {len(v)} values for {len(values)} rows; give one per row")
    explain_binary(values, p_text is None, ys, v, pos_weight, label_smoothing, reduction)


def _check_probs(rows: list[list[float]]) -> None:
    for i, r in enumerate(rows, start=1):
        if any(not 0 <= x <= 1 for x in r):
            raise CliError(
                f"row {i} of --probs has a value outside [0, 1]; "
                "give probabilities, or raw scores with --logits"
            )
        if abs(sum(r) - 1) > 1e-3:
            raise CliError(
                f"row {i} of --probs sums to {sum(r):.4g}, not 1; "
                "give probabilities that sum to 1, or raw scores with --logits"
            )


def _multiclass(probs, logits, target, weight, label_smoothing, ignore_index, reduction) -> None:
    """Check the multi-class options (the target read by `parse_target`), then explain."""
    if (probs is None) == (logits is None):
        raise CliError(
            "give exactly one of --probs (probabilities) or --logits (raw scores), "
            "e.g. --probs 0.2,0.7,0.1 --target 1"
        )
    rows = _rows(probs or logits, "--probs" if probs else "--logits")
    C = len(rows[0])
    if probs:
        _check_probs(rows)
    if target is None:
        raise CliError("--target is required: the true class index of each row, e.g. --target 1")
    targets, dists, note = parse_target(target, len(rows), C)
    for t in targets or []:
        if t != ignore_index and not 0 <= t < C:
            raise CliError(
                f"--target {t} is not a class index in 0..{C - 1}; "
                "count classes from 0 (the seed's class 2 of 3 is index 1)"
            )
    w = _numbers(weight, "--weight") if weight else None
    if w is not None and (len(w) != C or any(x < 0 for x in w)):
        raise CliError(f"--weight needs {C} non-negative values, one per class; fix the list")
    if note:
        click.echo(note + "\n")
    explain_multiclass(
        rows, logits is not None, targets, w, label_smoothing, ignore_index, reduction, dists
    )


@click.command(short_help="The loss step by step: formula, each term, result.")
@click.option("--probs", help="Predicted probabilities, one per class: 0.2,0.7,0.1 (rows: ';').")
@click.option("--logits", help="Raw scores (logits), one per class: 1.0,2.0,0.1 (rows: ';').")
@click.option(
    "--target",
    help="True class index per row, counting from 0: 1 (rows: 1,0); or per row a one-hot or "
    "probability row: 0,1,0 or 0.1,0.8,0.1 (rows: ';').",
)
@click.option("--binary", is_flag=True, help="Binary cross-entropy: use --p or --logit, and --y.")
@click.option("--p", "p_text", help="Binary: probability of class 1 per row: 0.9 (rows: 0.9,0.2).")
@click.option("--logit", "logit_text", help="Binary: logit per row: 2.0 (sigmoid gives p).")
@click.option("--y", "y_text", help="Binary: label per row, 0 or 1 (soft labels in [0, 1] too).")
@click.option("--weight", help="Multi-class: a weight per class (w). Binary: a weight per row (v).")
@click.option("--pos-weight", type=float, help="Binary with --logit: weight of the positive term.")
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="eps: mixes the one-hot target with the uniform distribution.",
)
@click.option(
    "--ignore-index",
    type=int,
    default=-100,
    show_default=True,
    help="Multi-class: rows with this target count for nothing.",
)
@click.option(
    "--reduction", type=click.Choice(["mean", "sum", "none"]), default="mean", show_default=True
)
def explain(**o) -> None:
    """Work out the cross-entropy loss step by step: formula, every term, the result.

    Each term is computed from the formula with plain arithmetic, then crossent's functional API
    computes the same loss, and both results are printed.

    \b
    Examples (the first seed's numbers):
      crossent explain --probs 0.2,0.7,0.1 --target 1          -log(0.7) = 0.3567
      crossent explain --binary --p 0.9 --y 1                   -log(0.9) = 0.1054
      crossent explain --logits 1.0,2.0,0.1 --target 1          softmax first: 0.4170
      crossent explain --binary --logit 2.0 --y 1               sigmoid first: 0.1269
    \b
    Options and their effect:
      crossent explain --logits 1,2,0.1 --target 1 --label-smoothing 0.1
      crossent explain --probs "0.2,0.7,0.1;0.6,0.3,0.1" --target 1,0 --weight 1,2,1
      crossent explain --probs "0.2,0.7,0.1;0.6,0.3,0.1" --target 1,0 --ignore-index 0
      crossent explain --probs 0.2,0.7,0.1 --target 0,1,0      one-hot: class index 1
      crossent explain --logits 1,2,0.1 --target 0.1,0.8,0.1   a soft target
    """
    if o["binary"]:
        if o["probs"] or o["logits"] or o["target"] is not None:
            raise CliError(
                "--binary takes --p or --logit and --y, not --probs/--logits/--target; "
                "drop --binary for the multi-class loss"
            )
        keys = (
            "p_text",
            "logit_text",
            "y_text",
            "weight",
            "pos_weight",
            "label_smoothing",
            "reduction",
        )
        _binary(*(o[k] for k in keys))
        return
    if o["p_text"] or o["logit_text"] or o["y_text"] or o["pos_weight"] is not None:
        raise CliError("--p, --logit, --y and --pos-weight belong to the binary loss; add --binary")
    keys = ("probs", "logits", "target", "weight", "label_smoothing", "ignore_index", "reduction")
    _multiclass(*(o[k] for k in keys))
