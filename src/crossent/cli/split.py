"""The train/validation split of `crossent train`, recomputed by `crossent evaluate --split`.

Seeded (the same rows every time for the same labels, fraction and seed) and stratified by class
when scikit-learn can stratify; when it cannot, a plain random split and a sentence saying why,
which train prints (with thousands of classes, classes with a single row are the usual reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def split_indices(
    y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(train rows, validation rows, why not stratified or None).

    Stratified by class when scikit-learn can: every class needs two rows, and both parts need
    at least one row per class. Otherwise a plain random split, and the reason says why.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    if val_fraction <= 0:
        return rows, rows[:0], None
    counts = np.bincount(y)
    counts = counts[counts > 0]
    n_val = int(np.ceil(val_fraction * len(y)))  # train_test_split's rounding of test_size
    why = None
    if (counts < 2).any():
        single = int((counts < 2).sum())
        why = (
            f"{single} of the {len(counts)} classes {'has' if single == 1 else 'have'} a single "
            "row (stratifying needs two per class)"
        )
    elif n_val < len(counts):
        why = (
            f"the validation split ({n_val} rows) is smaller than the number of classes "
            f"({len(counts)}); raise --val-split to stratify"
        )
    elif len(y) - n_val < len(counts):
        why = (
            f"the training split ({len(y) - n_val} rows) is smaller than the number of classes "
            f"({len(counts)}); lower --val-split to stratify"
        )
    tr = va = None
    if why is None:
        try:
            tr, va = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=y)
        except ValueError as e:  # a refusal of scikit-learn's that the checks above missed
            why = str(e).strip().splitlines()[0]
    if tr is None or va is None:
        tr, va = train_test_split(rows, test_size=val_fraction, random_state=seed)
    if len(tr) == 0:
        raise CliError(f"--val-split {val_fraction} leaves no training rows; use a smaller value")
    return np.sort(tr), np.sort(va), why
