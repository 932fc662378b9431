"""Features from a table: fitted on the training rows with scikit-learn, saved and applied as JSON.

For the plan of `columns.plan_columns`, `fit` learns on the training rows only, with

    numeric, date parts   SimpleImputer(strategy="median") -> StandardScaler
    categorical           SimpleImputer: a "(missing)" category when the training rows have
                          missing values, else strategy="most_frequent" (a value missing only
                          later takes the commonest category) -> OneHotEncoder(max_categories=K,
                          handle_unknown="infrequent_if_exist")

and keeps only their fitted numbers (medians, means, scales, categories, the rare categories
merged into "other") as a plain dict that config.json stores: no pickle. `transform` applies that
dict with numpy and is tested equal to the fitted scikit-learn transformers. Output columns: in
table order, a numeric column as itself, a date as <col>_year, <col>_month, <col>_dayofweek, a
categorical column as <col>=<category> per kept category plus <col>=other when the training rows
had rare ones. One-hot columns are 0/1, not standardised.

A category never seen in training lights <col>=other when the model has that column (as
scikit-learn's infrequent_if_exist does), else no column at all: a column absent from training
would only carry its untrained initial weights. `transform` counts these and the imputed
values per column (`InputReport`) so predict and evaluate can say so.

A column whose kept categories would cover under half of the training rows (free text, names,
near-unique codes) is refused rather than encoded as mostly "other": --drop it or raise
--max-categories.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import numbers
from ._cells import arg, label, require_columns, rows_text
from ._errors import CliError
from .columns import DATE_PARTS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

VERSION = 1
MISSING = "(missing)"
OTHER = "other"
MAX_CATEGORIES = 20
MIN_COVERED = 0.5  # the kept categories must hold at least this share of the training rows


@dataclass
class InputReport:
    """What `transform` had to fill in: per column, imputed values and unseen categories."""

    imputed: Counter = field(default_factory=Counter)  # column -> rows imputed
    how: dict[str, str] = field(default_factory=dict)  # column -> what they became
    no_other: set[str] = field(default_factory=set)  # columns whose model has no 'other' column
    unseen: dict[str, Counter] = field(default_factory=dict)  # column -> category -> rows

    def lines(self, limit: int = 10) -> list[str]:
        """One note per column (at most `limit`, then how many more): stderr stays short."""
        out = []
        for col, cats in self.unseen.items():
            n = sum(cats.values())
            shown = ", ".join(
                repr(c if len(c) <= 30 else c[:29] + "…") for c, _ in cats.most_common(3)
            )
            more = f" and {len(cats) - 3} more" if len(cats) > 3 else ""
            # without an 'other' column (no rare category in training) 'other' is all zeros
            where = "no one-hot column lit" if col in self.no_other else f"column {col}={OTHER}"
            out.append(
                f"note: column '{col}': {n} row{'s' if n > 1 else ''} with a category not seen "
                f"in training ({shown}{more}), encoded as {OTHER} ({where})"
            )
        for col, n in self.imputed.items():
            out.append(
                f"note: column '{col}': {n} missing value{'s' if n > 1 else ''}, {self.how[col]}"
            )
        if len(out) > limit:
            out = [*out[:limit], f"note: and {len(out) - limit} more columns like these"]
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "imputed": dict(self.imputed),
            "unseen_categories": {c: dict(v) for c, v in self.unseen.items()},
        }


# ---------------------------------------------------------------------------------------------
# columns -> raw values


def _numbers(
    col: pd.Series, tokens: list[str], name: str, source: str, fmt: dict[str, str] | None = None
) -> np.ndarray:
    """float64 values of a numeric column; text is read as plain numbers, or as `fmt` (a
    `numbers.TextNumbers` as JSON) says; `tokens` are read as missing."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        col = col.astype(float)
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = col.astype(str).str.strip().where(col.notna())
        text = text.where(~text.isin(tokens))
        if fmt:
            num = numbers.parse(text, numbers.TextNumbers(**fmt))
        else:
            num = pd.to_numeric(text, errors="coerce")
        bad = num.isna() & text.notna()
        if bad.any():
            raise CliError(
                f"column '{name}' of {source} is not numeric ({col[bad].iloc[0]!r} in "
                f"{rows_text(bad, 1)}), but the model reads it as numbers; fix those values"
            )
        values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(values).any():
        raise CliError(f"column '{name}' of {source} has infinite values; replace them first")
    return values


def _date_parts(col: pd.Series, fmt: str | None, name: str, source: str) -> np.ndarray:
    """(N, 3) year, month, day of week (Monday = 0) as floats; NaN where missing."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):  # Excel and Parquet dates: already dates
        when = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) is not None else col
        parts = [when.dt.year, when.dt.month, when.dt.day_of_week]
        return np.stack([p.to_numpy(dtype=np.float64, na_value=np.nan) for p in parts], axis=1)
    text = col.astype(str).str.strip().where(col.notna())
    when = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce")
    bad = when.isna() & text.notna()
    if bad.any():
        raise CliError(
            f"column '{name}' of {source} has a value that is not a date like the training "
            f"data's ({col[bad].iloc[0]!r} in {rows_text(bad, 1)}); fix those values"
        )
    parts = [when.dt.year, when.dt.month, when.dt.day_of_week]
    return np.stack([p.to_numpy(dtype=np.float64, na_value=np.nan) for p in parts], axis=1)


def _categories(col: pd.Series) -> np.ndarray:
    """Category names as an object array; missing stays None."""
    import numpy as np

    return np.array([None if v is None or v != v else label(v) for v in col.tolist()], object)


# ---------------------------------------------------------------------------------------------
# fit


def fit(
    frame: pd.DataFrame, plan: Any, source: str, max_categories: int = MAX_CATEGORIES
) -> dict[str, Any]:
    """Learn the preprocessing from `frame` (the training rows only) as a JSON-ready dict."""
    import sklearn

    stats = _fit_numeric(frame, plan, source)
    spec_cols: list[dict[str, Any]] = []
    for name, kind in plan.kinds.items():
        if kind == "numeric":
            median, mean, scale = stats[name]
            entry = {"median": median, "mean": mean, "scale": scale}
            spec_cols.append(
                {
                    "name": name,
                    "kind": kind,
                    **entry,
                    "missing_tokens": plan.missing_tokens.get(name, []),
                }
            )
            if name in plan.number_formats:  # '197,608', '$1.5', '12%': read as written
                spec_cols[-1]["text_numbers"] = plan.number_formats[name].as_json()
        elif kind == "date":
            parts = []
            for p in DATE_PARTS:
                median, mean, scale = stats[f"{name}_{p}"]
                parts.append({"part": p, "median": median, "mean": mean, "scale": scale})
            spec_cols.append(
                {"name": name, "kind": kind, "format": plan.date_formats.get(name), "parts": parts}
            )
        else:
            spec_cols.append(_fit_categorical(frame[name], name, source, max_categories))
    spec = {
        "version": VERSION,
        "columns": spec_cols,
        "max_categories": max_categories,
        "fitted_with": f"scikit-learn {sklearn.__version__}: SimpleImputer, StandardScaler, "
        f"OneHotEncoder(max_categories={max_categories}, handle_unknown='infrequent_if_exist')",
    }
    spec["outputs"] = output_names(spec)
    return spec


def _fit_numeric(frame: pd.DataFrame, plan: Any, source: str) -> dict[str, tuple]:
    """Output name -> (median, mean, scale): one SimpleImputer(median) + StandardScaler over
    the numeric columns and the date parts together."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    blocks, flat, source_col = [], [], []  # arrays; output names; the column each came from
    for name, kind in plan.kinds.items():
        if kind == "numeric":
            fmt = plan.number_formats.get(name)
            tokens = plan.missing_tokens.get(name, [])
            fmt_json = None if fmt is None else fmt.as_json()
            blocks.append(_numbers(frame[name], tokens, name, source, fmt_json))
            flat.append(name)
            source_col.append(name)
        elif kind == "date":
            blocks.append(_date_parts(frame[name], plan.date_formats.get(name), name, source))
            flat += [f"{name}_{p}" for p in DATE_PARTS]
            source_col += [name] * len(DATE_PARTS)
    if not blocks:
        return {}
    X = np.column_stack(blocks)
    empty = np.isnan(X).all(axis=0)
    if empty.any():
        col = source_col[int(np.flatnonzero(empty)[0])]
        raise CliError(
            f"column '{col}' of {source} has no values in the training rows; "
            f"leave it out with --drop {arg(col)}, or use more rows"
        )
    imputer = SimpleImputer(strategy="median").fit(X)
    scaler = StandardScaler().fit(imputer.transform(X))
    return {
        n: (float(imputer.statistics_[i]), float(scaler.mean_[i]), float(scaler.scale_[i]))
        for i, n in enumerate(flat)
    }


def _fit_categorical(col: pd.Series, name: str, source: str, cap: int) -> dict[str, Any]:
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    values = _categories(col).reshape(-1, 1)
    has_missing = any(v is None for v in values[:, 0])
    strategy = (
        {"strategy": "constant", "fill_value": MISSING}
        if has_missing
        else {"strategy": "most_frequent"}
    )
    imputer = SimpleImputer(missing_values=None, **strategy).fit(values)
    filled = imputer.transform(values)
    enc = OneHotEncoder(max_categories=cap, handle_unknown="infrequent_if_exist").fit(filled)
    categories = [str(c) for c in enc.categories_[0]]
    rare = [
        str(c)
        for c in (
            enc.infrequent_categories_[0] if enc.infrequent_categories_[0] is not None else []
        )
    ]
    kept = [c for c in categories if c not in set(rare)]
    if rare:
        covered = float(np.isin(filled[:, 0], kept).mean())
        if covered < MIN_COVERED:
            raise CliError(
                f"column '{name}' of {source} has {len(categories)} categories and the "
                f"{len(kept)} most frequent cover only {covered:.0%} of the training rows, so "
                f"most rows would be '{OTHER}'; leave it out with --drop {arg(name)}, or raise "
                f"--max-categories (now {cap})"
            )
    return {
        "name": name,
        "kind": "categorical",
        "categories": kept,
        "other": rare,  # merged into the <name>=other column; [] when there is none
        "fill": str(imputer.statistics_[0]),  # what a missing value becomes
    }


def output_names(spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for c in spec["columns"]:
        if c["kind"] == "numeric":
            out.append(c["name"])
        elif c["kind"] == "date":
            out += [f"{c['name']}_{p['part']}" for p in c["parts"]]
        else:
            out += [f"{c['name']}={v}" for v in c["categories"]]
            if c["other"]:
                out.append(f"{c['name']}={OTHER}")
    return out


# ---------------------------------------------------------------------------------------------
# transform


def transform(
    spec: dict[str, Any], frame: pd.DataFrame, source: str
) -> tuple[np.ndarray, InputReport]:
    """(N, len(outputs)) float64 features of `frame` and what had to be filled in."""
    import numpy as np

    require_columns(frame, [c["name"] for c in spec["columns"]], source)
    report = InputReport()
    blocks: list[np.ndarray] = []

    def scaled(values: np.ndarray, stats: dict[str, float], name: str) -> np.ndarray:
        missing = np.isnan(values)
        if missing.any():
            report.imputed[name] += int(missing.sum())
            report.how[name] = f"filled with the training median {stats['median']:g}"
        return (np.where(missing, stats["median"], values) - stats["mean"]) / stats["scale"]

    for c in spec["columns"]:
        name, col = c["name"], frame[c["name"]]
        if c["kind"] == "numeric":
            values = _numbers(col, c.get("missing_tokens", []), name, source, c.get("text_numbers"))
            blocks.append(scaled(values, c, name)[:, None])
        elif c["kind"] == "date":
            parts = _date_parts(col, c.get("format"), name, source)
            if np.isnan(parts[:, 0]).any():
                report.imputed[name] += int(np.isnan(parts[:, 0]).sum())
                report.how[name] = "filled with the training medians of its parts"
            blocks.append(
                np.stack(
                    [
                        (np.where(np.isnan(parts[:, i]), p["median"], parts[:, i]) - p["mean"])
                        / p["scale"]
                        for i, p in enumerate(c["parts"])
                    ],
                    axis=1,
                )
            )
        else:
            blocks.append(_one_hot(c, _categories(col), report))
    X = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
    return X, report


def _one_hot(c: dict[str, Any], values: np.ndarray, report: InputReport) -> np.ndarray:
    import numpy as np
    import pandas as pd

    missing = np.array([v is None for v in values], dtype=bool)
    if missing.any():
        report.imputed[c["name"]] += int(missing.sum())
        report.how[c["name"]] = (
            f"encoded as the category {MISSING!r}"
            if c["fill"] == MISSING
            else f"filled with the most frequent training category {c['fill']!r}"
        )
        values = np.where(missing, c["fill"], values)

    idx = pd.Index(c["categories"], dtype=object).get_indexer(values)  # -1: not a kept category
    rare = np.isin(values, np.array(c["other"], dtype=object))
    width = len(c["categories"]) + (1 if c["other"] else 0)
    out = np.zeros((len(values), width))
    known = idx >= 0
    out[np.flatnonzero(known), idx[known]] = 1.0
    if c["other"]:
        out[~known, width - 1] = 1.0  # rare in training, or never seen: the 'other' column
    unseen = Counter(values[~known & ~rare].tolist())
    if unseen:
        report.unseen[c["name"]] = unseen
        if not c["other"]:
            report.no_other.add(c["name"])
    return out
