"""How the command line names cells, rows and columns in its messages (a leaf: imports nothing of
the CLI but `_errors`, so `columns`, `preprocess` and `data` can all use it without a cycle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def arg(name: str) -> str:
    """A column name as the shell needs it in a suggested option (--drop 'Individual ID')."""
    import shlex

    return shlex.quote(name)


def label(v: Any) -> str:
    """A cell as a class or category name: integral numbers print without '.0' (1.0 -> '1')."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def is_text(col: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)


def rows_text(mask: Any, limit: int = 5) -> str:
    """'data rows 3, 7 and 2 more' (1-based, counting data rows after the header).

    A boolean Series names the rows by its index (the file's row positions, also in a subset)."""
    import numpy as np

    if hasattr(mask, "index"):
        idx = np.asarray(mask.index[np.asarray(mask, dtype=bool)]) + 1
    else:
        idx = np.flatnonzero(np.asarray(mask)) + 1
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"data row{'s' if len(idx) > 1 else ''} {shown}{more}"


def require_columns(frame: pd.DataFrame, names: Sequence[str], source: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        listed = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CliError(
            f"{source} lacks the feature column(s) {listed}; "
            f"use data with the columns {', '.join(list(names)[:8])}{' ...' if len(names) > 8 else ''}"
        )
