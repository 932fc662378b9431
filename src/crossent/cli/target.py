"""The label column: checked once, turned into class names and class indices.

A classifier learns classes, so a target that is not classes is refused with one sentence
(`--classification` accepts it when each value really is a class, e.g. product codes):

    a quantity     numbers with more than NUMERIC_CLASSES_MAX distinct values (a price, a
                   temperature, a count): each value would become a class of a few rows, and
                   accuracy would mean nothing. scikit-learn's classifiers refuse non-integral
                   ones ("Unknown label type: continuous"); crossent says why and what to do
    an id          a different value in every row: every class would have one row

Labels are strings (so 1, 1.0 and "1" in a file are the same class); numbers sort as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._cells import arg, label, rows_text
from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

# Distinct numeric labels accepted without --classification. Class-coded numeric targets in
# the tables tried (wine quality 3-9, digits 0-9, anes96's 7-point scales, fair's ratings) have
# at most 10; quantities mistaken for labels have dozens (the target had 67).
NUMERIC_CLASSES_MAX = 20


def check_target(frame: pd.DataFrame, target: str | None, source: str) -> str:
    if target is None:
        raise CliError(f"{source} is a table, so name its label column with --target COLUMN")
    if target not in frame.columns:
        cols = ", ".join(repr(c) for c in list(frame.columns)[:10])
        raise CliError(f"{source} has no column '{target}'; pick --target from its columns: {cols}")
    return target


def label_strings(frame: pd.DataFrame, target: str, source: str) -> list[str]:
    """The target column as strings; integral numbers print without '.0' (1.0 -> '1')."""
    col = frame[target]
    if col.isna().any():
        raise CliError(
            f"the target column '{target}' of {source} has {int(col.isna().sum())} missing "
            f"label(s) ({rows_text(col.isna())}); fill or drop those rows first"
        )
    return [label(v) for v in col.tolist()]


def _is_number_column(col: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def sorted_classes(frame: pd.DataFrame, target: str, labels: list[str]) -> list[str]:
    """Numbers in numeric order (2 < 10), everything else in text order."""
    uniq = sorted(set(labels))
    return sorted(uniq, key=float) if _is_number_column(frame[target]) else uniq


def check_classes(
    frame: pd.DataFrame, target: str, labels: Sequence[str], source: str, classification: bool
) -> None:
    """Refuse a target that is a quantity or an id (unless `classification`), or one class."""
    from .columns import ID_MIN_ROWS

    col, distinct = frame[target], sorted(set(labels))
    if len(distinct) < 2:
        raise CliError(
            f"the target column '{target}' of {source} holds a single class ({distinct[0]!r}); "
            "a classifier needs at least two, so check --target or add rows of other classes"
        )
    if classification:
        return
    if _is_number_column(col) and len(distinct) > NUMERIC_CLASSES_MAX:
        shown = ", ".join(sorted(distinct, key=float)[:3])
        whole = "whole " if all(float(v).is_integer() for v in distinct) else ""
        raise CliError(
            f"the target '{target}' of {source} holds {len(distinct)} distinct {whole}numbers "
            f"({shown}, ...), which looks like a quantity to predict, not classes (crossent "
            f"trains classifiers): bin it into a few classes first, or pass --classification "
            f"if each number is a class; --target {arg(target)} as it is would give "
            f"{len(distinct)} classes of ~{len(labels) // len(distinct)} rows"
        )
    if len(labels) >= ID_MIN_ROWS and len(distinct) == len(labels):
        raise CliError(
            f"the target '{target}' of {source} looks like a row id (a different value in each "
            f"of its {len(labels)} rows), so every class would have one row and nothing to "
            "learn from; pick the label column with --target, or pass --classification if "
            "these really are the classes"
        )


def encode_labels(labels: Sequence[str], classes: Sequence[str], source: str) -> np.ndarray:
    """Label strings -> class indices (int64); a label the model never saw is an error."""
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(labels) - set(index))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:5])
        raise CliError(
            f"{source} has label(s) {shown} that the model was not trained on "
            f"(it knows {', '.join(repr(c) for c in classes[:10])}); "
            "use data with those classes only, or retrain on data that includes them"
        )
    return np.array([index[s] for s in labels], dtype=np.int64)
