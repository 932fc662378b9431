"""Which columns are features, and of what kind: inferred from the table, overridden by options.

Kinds (what `preprocess` does with each):

    numeric      numbers (a text column whose values all parse as numbers is one too, also when
                 written with thousands separators, currency or percent signs ('197,608',
                 '$1,234.50', '12%': `numbers`, said in a notice); a column that is >= 90%
                 numbers and has at most 3 other tokens such as '?' or 'n/a' is numeric with
                 those tokens read as missing, said in a notice)
    categorical  text, bool, or a column named by --categorical: one-hot encoded
    date         dates (Excel, Parquet), or text whose every value parses as a date in one
                 format: expanded into
                 year / month / day of week, or left out with --dates drop

Left out, each with a one-line notice (`--keep COL` keeps one):

    id           integer or text unique per row, or integer-valued and monotone with the row
                 number with many distinct values (a row counter with gaps); on a file sorted by
                 the label such a column predicts it perfectly and means nothing on new rows.
                 Numbers written with thousands separators or signs are quantities, never ids

Refused (one sentence, exit code 2): a column with no values at all; a feature identical to the
target, or the target under other names (a one-to-one relabelling: it leaks the label); --drop,
--keep, --categorical or --numeric of the target; an option naming a column the table lacks; a
column both --categorical and --numeric; a --numeric column with a value that is not a number.
(`preprocess.fit` refuses the one problem only the training rows show: too many categories.)

`plan_columns` decides; `infer_kind` is what `crossent data` shows for each column. (`arg` and
`label` live in `_cells` and are re-exported here.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import numbers
from ._cells import arg, is_text, label, rows_text
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
    number_formats: dict[str, numbers.TextNumbers] = field(default_factory=dict)  # numeric col
    date_formats: dict[str, str | None] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return list(self.kinds)


@dataclass(frozen=True)
class ColumnOptions:
    """--drop, --keep, --categorical, --numeric, --dates: the user's say over the columns."""

    drop: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    dates: str = "expand"


# ---------------------------------------------------------------------------------------------
# one column


@dataclass(frozen=True)
class NumericReading:
    """How a text column reads as numbers: values (NaN where missing or a marker), the markers
    read as missing, and the format of numbers written for people (None: plain)."""

    values: Any  # pd.Series of float64, the column's index
    tokens: list[str]
    fmt: numbers.TextNumbers | None


def numeric_reading(col: pd.Series, decimal: str = ".", forced: bool = False):
    """For a text column: its `NumericReading` if it is numbers (every value, or all but at most
    MISSING_TOKENS_MAX distinct markers on at most MISSING_SHARE of the values; `forced`
    (--numeric): every value), else None."""
    import numpy as np
    import pandas as pd

    present = col.dropna()
    if len(present) == 0:
        return None
    fmt, values = numbers.read(present.astype(str), decimal, MISSING_TOKENS_MAX)
    bad = present[values.isna().to_numpy()].astype(str).str.strip()
    tokens = sorted(set(bad))
    if len(bad) and (
        forced or len(bad) > MISSING_SHARE * len(present) or len(tokens) > MISSING_TOKENS_MAX
    ):
        return None
    full = pd.Series(np.nan, index=col.index, dtype=np.float64)
    full[present.index] = values.to_numpy()
    return NumericReading(full, tokens, fmt)


def numeric_tokens(col: pd.Series, decimal: str = ".") -> list[str] | None:
    """For a text column: [] if every value is a number, the few other tokens if it is mostly
    numbers (read as missing), None if it is not numeric."""
    reading = numeric_reading(col, decimal)
    return None if reading is None else reading.tokens


def date_format(col: pd.Series) -> str | None | bool:
    """The strftime format every non-missing value of a text column parses with, None when
    pandas parses them all without one (ISO 8601, and columns that hold dates already), False
    when the column is not dates."""
    import warnings

    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):
        return None
    present = col.dropna().astype(str)
    if len(present) == 0 or not present.str.match(_DATE_SHAPE).all():
        return False
    from pandas.tseries.api import guess_datetime_format

    first = present.iloc[0].strip()
    # month first (04/03/2021 = April 3), unless some value only parses day first (13/03/2021);
    # pandas warns about the dayfirst guess it is asked for: this choice is ours, said in the plan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        guesses = [guess_datetime_format(first, dayfirst=d) for d in (False, True)]
        for fmt in dict.fromkeys([*guesses, None]):  # None: any ISO 8601 mix (dates, date-times)
            try:
                parsed = pd.to_datetime(
                    present.str.strip(), format=fmt or "ISO8601", errors="coerce"
                )
            except (ValueError, TypeError):
                continue
            if parsed.notna().all():
                return fmt
    return False


def infer_kind(col: pd.Series, decimal: str = ".") -> str:
    """numeric, categorical or date, from the values alone (no options, no id rule)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        return "categorical"
    if pd.api.types.is_numeric_dtype(col):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(col):
        return "date"
    if is_text(col):
        if numeric_reading(col, decimal) is not None:
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
    if pd.api.types.is_integer_dtype(col) or is_text(col):
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


def _as_id_candidate(reading: NumericReading) -> pd.Series:
    """Numbers read from text, as the id rule sees a numeric column (integers stay integers)."""
    import numpy as np

    values = reading.values
    if values.notna().all() and bool(np.all(values == np.round(values))):
        return values.astype("int64")
    return values


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


def _check_options(
    frame: pd.DataFrame, target: str, source: str, features: Sequence[str], opts: ColumnOptions
) -> None:
    for option, names in (
        ("--features", features),
        ("--drop", opts.drop),
        ("--keep", opts.keep),
        ("--categorical", opts.categorical),
        ("--numeric", opts.numeric),
    ):
        _check_names(frame, option, names, source)
    if target in opts.drop:
        raise CliError(f"--drop names the target '{target}', which train needs; drop other columns")
    for option, names in (
        ("--keep", opts.keep),
        ("--categorical", opts.categorical),
        ("--numeric", opts.numeric),
    ):
        if target in names:
            raise CliError(
                f"{option} names the target '{target}', which is the label, not a feature; "
                f"leave it out of {option}"
            )
    both = sorted(set(opts.categorical) & set(opts.numeric))
    if both:
        raise CliError(f"column {both[0]!r} is named by both --categorical and --numeric; pick one")


def plan_columns(
    frame: pd.DataFrame,
    target: str,
    source: str,
    *,
    labels: Sequence[str],
    features: Sequence[str] | None = None,
    decimal: str = ".",
    **options: Any,
) -> ColumnPlan:
    """The columns `train` uses (`features` if given, else all but the target) and their kinds.

    `options` are `ColumnOptions`' fields; `decimal` is the file's decimal mark. Columns listed
    in `features` are used as given (no id rule): the user chose them.
    """
    opts = ColumnOptions(**{k: tuple(v) if k != "dates" else v for k, v in options.items()})
    _check_options(frame, target, source, features or (), opts)
    chosen = list(features) if features else [c for c in frame.columns if c != target]
    plan = ColumnPlan(kinds={})
    ctx = _Context(frame, target, source, labels, len(set(labels)), decimal, bool(features), opts)
    for name in chosen:
        _plan_column(ctx, plan, name)
    if not plan.kinds:
        raise CliError(f"{source} has no feature columns besides '{target}'; add feature columns")
    return plan


@dataclass(frozen=True)
class _Context:
    frame: Any
    target: str
    source: str
    labels: Sequence[str]
    n_classes: int
    decimal: str
    features_named: bool
    opts: ColumnOptions


def _plan_column(ctx: _Context, plan: ColumnPlan, name: str) -> None:
    """Decide one column: refuse it, leave it out (with a notice) or add it with its kind."""
    opts, col = ctx.opts, ctx.frame[name]
    if name in opts.drop:
        plan.dropped[name] = "--drop"
        return
    if col.isna().all():
        raise CliError(
            f"column '{name}' of {ctx.source} has no values (all {len(col)} rows are empty); "
            f"leave it out with --drop {arg(name)}"
        )
    if _leaks(col, ctx.labels, ctx.n_classes):
        same = [label(v) for v in col.tolist()] == list(ctx.labels)
        how = "identical to" if same else "a one-to-one relabelling of"
        raise CliError(
            f"column '{name}' of {ctx.source} is {how} the target '{ctx.target}', so it would "
            f"leak the label into the features; leave it out with --drop {arg(name)}"
        )
    forced = (
        "numeric" if name in opts.numeric else "categorical" if name in opts.categorical else None
    )
    kind = forced or infer_kind(col, ctx.decimal)
    reading = None
    if kind == "numeric" and is_text(col):
        reading = numeric_reading(col, ctx.decimal, forced=bool(forced))
        if reading is None:
            _not_numeric(col, name, ctx.source, ctx.decimal)
    named = ctx.features_named or name in opts.keep or forced  # the user chose it: no id rule
    # numbers written with separators or signs are quantities for people to read, not ids
    written = reading is not None and reading.fmt is not None
    id_col = col if reading is None else _as_id_candidate(reading)
    reason = None if (named or written or kind == "date") else id_reason(id_col)
    if reason:
        plan.dropped[name] = reason
        plan.notices.append(
            f"note: column '{name}' left out: {reason}; --keep {arg(name)} uses it as a feature"
        )
        return
    if reading is not None:
        _note_reading(plan, name, col, reading)
    if kind == "date":
        if opts.dates == "drop":
            plan.dropped[name] = "--dates drop"
            plan.notices.append(f"note: date column '{name}' left out (--dates drop)")
            return
        fmt = date_format(col)
        plan.date_formats[name] = fmt if isinstance(fmt, str) else None
        parts = ", ".join(f"{name}_{p}" for p in DATE_PARTS)
        plan.notices.append(f"note: date column '{name}' expanded into {parts}")
    plan.kinds[name] = kind


def _note_reading(plan: ColumnPlan, name: str, col: pd.Series, reading: NumericReading) -> None:
    if reading.tokens:
        plan.missing_tokens[name] = reading.tokens
        shown = ", ".join(repr(t) for t in reading.tokens)
        plan.notices.append(f"note: column '{name}': {shown} read as missing values")
    if reading.fmt is not None:
        plan.number_formats[name] = reading.fmt
        seps = {",": "','", ".": "'.'", " ": "spaces", "'": '"\'"'}.get(
            reading.fmt.thousands, "spaces"
        )
        example = numbers.example(col, reading.values, reading.fmt)
        plan.notices.append(
            f"note: column '{name}' read as numbers written with thousands separators ({seps}), "
            f"decimal mark '{reading.fmt.decimal}', currency and percent signs (e.g. {example}); "
            f"--categorical {arg(name)} keeps it as text"
        )


def _not_numeric(col: pd.Series, name: str, source: str, decimal: str) -> None:
    import pandas as pd

    fmt, values = numbers.read(col.dropna().astype(str), decimal, max_words=len(col))
    bad = pd.Series(False, index=col.index)
    bad[col.dropna().index] = values.isna().to_numpy()
    example = col[bad].iloc[0]
    raise CliError(
        f"column '{name}' of {source} is not numeric ({example!r} in {rows_text(bad, 1)}) "
        "even with thousands separators, currency and percent signs allowed; fix those values, "
        f"or leave it out with --drop {arg(name)}"
    )
