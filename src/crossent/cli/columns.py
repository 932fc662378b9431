"""Which columns are features, and of what kind: inferred from the table, overridden by options.

Kinds (what `preprocess` does with each):

    numeric      numbers (a text column whose values all parse as numbers is one too; a column
                 that is >= 90% numbers and has at most 3 other tokens such as '?' or 'n/a' is
                 numeric with those tokens read as missing, said in a notice)
    categorical  text, bool, or a column named by --categorical: one-hot encoded
    date         text whose every value parses as a date in one format: expanded into
                 year / month / day of week, or left out with --dates drop

Left out, each with a one-line notice (`--keep COL` keeps one):

    id           integer or text unique per row, or integer-valued and monotone with the row
                 number with many distinct values (a row counter with gaps); on a file sorted by
                 the label such a column predicts it perfectly and means nothing on new rows

Refused (one sentence, exit code 2): a column with no values at all; a feature identical to the
target, or the target under other names (a one-to-one relabelling: it leaks the label); --drop,
--keep, --categorical or --numeric of the target; an option naming a column the table lacks; a
column both --categorical and --numeric; a --numeric column with a value that is not a number.
(`preprocess.fit` refuses the one problem only the training rows show: too many categories.)

`plan_columns` decides; `infer_kind` is what `crossent data` shows for each column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

KINDS = ("numeric", "categorical", "date")
ID_MIN_ROWS = 10  # below this, a unique integer column is as likely a small feature as an id
MISSING_TOKENS_MAX = 3  # distinct non-numbers tolerated in a numeric column ('?', 'n/a', '-')
MISSING_SHARE = 0.1  # of a numeric column's values, at most, may be such tokens
DATE_PARTS = ("year", "month", "dayofweek")
_DATE_SHAPE = r"^\s*\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*$"


@dataclass
class ColumnPlan:
    """The features in table order with their kind, what was left out and why, and notices."""

    kinds: dict[str, str]  # feature column -> one of KINDS
    dropped: dict[str, str] = field(default_factory=dict)  # column -> reason
    missing_tokens: dict[str, list[str]] = field(default_factory=dict)  # numeric col -> tokens
    date_formats: dict[str, str | None] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return list(self.kinds)


# ---------------------------------------------------------------------------------------------
# one column


def arg(name: str) -> str:
    """A column name as the shell needs it in a suggested option (--drop 'Individual ID')."""
    import shlex

    return shlex.quote(name)


def label(v: Any) -> str:
    """A cell as a class or category name: integral numbers print without '.0' (1.0 -> '1')."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _is_text(col: pd.Series) -> bool:
    import pandas as pd

    return pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)


def numeric_tokens(col: pd.Series) -> list[str] | None:
    """For a text column: [] if every value is a number, the few other tokens if it is mostly
    numbers (read as missing), None if it is not numeric."""
    import pandas as pd

    present = col.dropna()
    if len(present) == 0:
        return None
    num = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    bad = present[num.isna()].astype(str).str.strip()
    if len(bad) == 0:
        return []
    tokens = sorted(set(bad))
    if len(bad) <= MISSING_SHARE * len(present) and len(tokens) <= MISSING_TOKENS_MAX:
        return tokens
    return None


def date_format(col: pd.Series) -> str | None | bool:
    """The strftime format every non-missing value of a text column parses with, None when
    pandas parses them all without one (ISO 8601), False when the column is not dates."""
    import pandas as pd

    present = col.dropna().astype(str)
    if len(present) == 0 or not present.str.match(_DATE_SHAPE).all():
        return False
    from pandas.tseries.api import guess_datetime_format

    first = present.iloc[0].strip()
    # month first (04/03/2021 = April 3), unless some value only parses day first (13/03/2021)
    guesses = [guess_datetime_format(first, dayfirst=d) for d in (False, True)]
    for fmt in dict.fromkeys([*guesses, None]):  # None: any ISO 8601 mix (dates, date-times)
        try:
            parsed = pd.to_datetime(present.str.strip(), format=fmt or "ISO8601", errors="coerce")
        except (ValueError, TypeError):
            continue
        if parsed.notna().all():
            return fmt
    return False


def infer_kind(col: pd.Series) -> str:
    """numeric, categorical or date, from the values alone (no options, no id rule)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        return "categorical"
    if pd.api.types.is_numeric_dtype(col):
        return "numeric"
    if _is_text(col):
        if numeric_tokens(col) is not None:
            return "numeric"
        if date_format(col) is not False:
            return "date"
    return "categorical"


def id_reason(col: pd.Series) -> str | None:
    """Why the column looks like a row identifier, or None."""
    import numpy as np
    import pandas as pd

    n = len(col)
    if n < ID_MIN_ROWS or col.isna().any():
        return None
    if pd.api.types.is_integer_dtype(col) or _is_text(col):
        if col.nunique() == n:
            return "it is unique per row (an identifier)"
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        values = col.to_numpy(dtype=np.float64)
        if not np.all(values == np.round(values)):
            return None
        steps = np.diff(values)
        distinct = len(np.unique(values))
        if distinct >= max(ID_MIN_ROWS, 0.1 * n) and (np.all(steps >= 0) or np.all(steps <= 0)):
            return "it grows with the row number (a row counter)"
    return None


def _leaks(col: pd.Series, target: Sequence[str], n_classes: int) -> bool:
    """True when the column and the target determine each other row by row."""
    import pandas as pd

    if col.isna().any() or col.nunique() != n_classes:  # one-to-one needs as many values
        return False
    values = [label(v) for v in col.tolist()]
    pairs = pd.DataFrame({"x": values, "y": list(target)}).drop_duplicates()
    return pairs["x"].is_unique and pairs["y"].is_unique


# ---------------------------------------------------------------------------------------------
# the whole table


def _check_names(frame: pd.DataFrame, option: str, names: Sequence[str], source: str) -> None:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        cols = ", ".join(repr(c) for c in list(frame.columns)[:10])
        raise CliError(f"{option} names {unknown[0]!r}, which {source} lacks; its columns: {cols}")


def plan_columns(
    frame: pd.DataFrame,
    target: str,
    source: str,
    *,
    labels: Sequence[str],
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    keep: Sequence[str] = (),
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    dates: str = "expand",
) -> ColumnPlan:
    """The columns `train` uses (`features` if given, else all but the target) and their kinds.

    Columns listed in `features` are used as given (no id rule): the user chose them.
    """
    for option, names in (
        ("--features", features or ()),
        ("--drop", drop),
        ("--keep", keep),
        ("--categorical", categorical),
        ("--numeric", numeric),
    ):
        _check_names(frame, option, names, source)
    if target in drop:
        raise CliError(f"--drop names the target '{target}', which train needs; drop other columns")
    for option, names in (("--keep", keep), ("--categorical", categorical), ("--numeric", numeric)):
        if target in names:
            raise CliError(
                f"{option} names the target '{target}', which is the label, not a feature; "
                f"leave it out of {option}"
            )
    both = sorted(set(categorical) & set(numeric))
    if both:
        raise CliError(f"column {both[0]!r} is named by both --categorical and --numeric; pick one")
    chosen = list(features) if features else [c for c in frame.columns if c != target]
    n_classes = len(set(labels))
    plan = ColumnPlan(kinds={})
    for name in chosen:
        if name in drop:
            plan.dropped[name] = "--drop"
            continue
        col = frame[name]
        if col.isna().all():
            raise CliError(
                f"column '{name}' of {source} has no values (all {len(col)} rows are empty); "
                f"leave it out with --drop {arg(name)}"
            )
        if _leaks(col, labels, n_classes):
            same = [label(v) for v in col.tolist()] == list(labels)
            how = "identical to" if same else "a one-to-one relabelling of"
            raise CliError(
                f"column '{name}' of {source} is {how} the target '{target}', so it would leak "
                f"the label into the features; leave it out with --drop {arg(name)}"
            )
        forced = "numeric" if name in numeric else "categorical" if name in categorical else None
        kind = forced or infer_kind(col)
        named = features or name in keep or forced  # the user chose it: no id rule
        reason = None if (named or kind == "date") else id_reason(col)
        if reason:
            plan.dropped[name] = reason
            plan.notices.append(
                f"note: column '{name}' left out: {reason}; --keep {arg(name)} uses it as a feature"
            )
            continue
        if kind == "numeric" and _is_text(col):
            tokens = numeric_tokens(col)
            if tokens is None or (tokens and forced):  # --numeric: every value a number
                _not_numeric(col, name, source)
            if tokens:
                plan.missing_tokens[name] = tokens
                shown = ", ".join(repr(t) for t in tokens)
                plan.notices.append(f"note: column '{name}': {shown} read as missing values")
        if kind == "date":
            if dates == "drop":
                plan.dropped[name] = "--dates drop"
                plan.notices.append(f"note: date column '{name}' left out (--dates drop)")
                continue
            fmt = date_format(col)
            plan.date_formats[name] = fmt if isinstance(fmt, str) else None
            parts = ", ".join(f"{name}_{p}" for p in DATE_PARTS)
            plan.notices.append(f"note: date column '{name}' expanded into {parts}")
        plan.kinds[name] = kind
    if not plan.kinds:
        raise CliError(f"{source} has no feature columns besides '{target}'; add feature columns")
    return plan


def _not_numeric(col: pd.Series, name: str, source: str) -> None:
    import pandas as pd

    from .data import rows_text

    num = pd.to_numeric(col.astype(str).str.strip(), errors="coerce")
    bad = num.isna() & col.notna()
    example = col[bad].iloc[0]
    raise CliError(
        f"column '{name}' of {source} is not numeric ({example!r} in {rows_text(bad, 1)}); "
        f"leave out --numeric {arg(name)} to one-hot encode it, or fix those values"
    )
