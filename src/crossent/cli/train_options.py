"""The text options of `crossent train` that click cannot check alone: --features, --hidden and
--class-weight, turned into lists (a bad value ends with one sentence and exit code 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._errors import CliError


def csv_list(text: str | None) -> list[str]:
    """The stripped, non-empty items of a comma-separated option; [] for None or ''."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def parse_hidden(text: str) -> list[int]:
    """--hidden '128,64' -> [128, 64]: one or more positive widths."""
    try:
        widths = [int(t) for t in csv_list(text)]
    except ValueError:
        widths = []
    if not widths or any(w <= 0 for w in widths):
        raise CliError(
            f"--hidden {text!r} is not a list of positive widths; write e.g. 64 or 128,64"
        )
    return widths


def parse_class_weights(text: str | None, classes: Sequence[str], y: Any) -> list[float] | None:
    """'balanced' (sklearn's n / (k * n_c)), '1,3' in class order, or 'name=w,...' (others 1)."""
    if not text:
        return None
    if text.strip() == "balanced":
        import numpy as np
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y)
        w = compute_class_weight("balanced", classes=present, y=y)
        out = [1.0] * len(classes)
        for c, wc in zip(present, w):
            out[int(c)] = float(wc)
        return out
    parts = csv_list(text)
    named = all("=" in p for p in parts)
    try:
        if named:
            out = [1.0] * len(classes)
            for p in parts:
                name, value = p.split("=", 1)
                if name.strip() not in classes:
                    raise CliError(
                        f"--class-weight names {name.strip()!r}, which is not a class "
                        f"(classes: {', '.join(classes)}); use the class names"
                    )
                out[list(classes).index(name.strip())] = float(value)
        else:
            out = [float(p) for p in parts]
    except ValueError:
        raise CliError(f"--class-weight {text!r} is not understood; write balanced, 1,3 or name=3")
    if len(out) != len(classes):
        raise CliError(
            f"--class-weight gives {len(out)} weights for {len(classes)} classes "
            f"({', '.join(classes)}); give one per class, in that order"
        )
    if any(w < 0 for w in out) or sum(out) == 0:
        raise CliError("--class-weight needs non-negative weights, not all zero; fix the values")
    return out


def _names(ctx: Any, param: Any, values: Sequence[str]) -> list[str]:
    """A repeatable column option: --drop a --drop b and --drop a,b both give ['a', 'b']."""
    return [n for v in values for n in csv_list(v)]


def column_options(command: Any) -> Any:
    """--drop, --keep, --categorical, --numeric, --dates, --max-categories and --sep: how the
    table's columns become features (train and data share them)."""
    import click

    from .data import sep_option
    from .preprocess import MAX_CATEGORIES

    for name, text in reversed(
        [
            ("--drop", "Leave this column out (repeat, or comma-separate several)."),
            (
                "--keep",
                "Use this column although it looks like a row id (unique per row, or "
                "growing with the row number).",
            ),
            ("--categorical", "One-hot encode this column although it holds numbers (codes)."),
            (
                "--numeric",
                "Read this column as numbers (values that are not numbers are an error).",
            ),
        ]
    ):
        command = click.option(
            name, name[2:], multiple=True, metavar="COL", callback=_names, help=text
        )(command)
    command = click.option(
        "--dates",
        type=click.Choice(["expand", "drop"]),
        default="expand",
        show_default=True,
        help="Date columns: expand into year, month and day of week, or leave them out.",
    )(command)
    command = click.option(
        "--max-categories",
        type=click.IntRange(min=2),
        default=MAX_CATEGORIES,
        show_default=True,
        help="One-hot columns per categorical column at most; rarer categories share an "
        "'other' column.",
    )(command)
    return sep_option(command)
