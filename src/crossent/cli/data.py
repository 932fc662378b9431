"""Data for the command line: scikit-learn's built-in data sets and CSV files, checked once here.

Training gets a `Table`: the raw frame, the label strings (so ``1``, ``1.0`` and ``"1"`` in a CSV
are the same class), the class list, and the `columns.ColumnPlan` of its features; `train` splits
the rows, fits `preprocess` on the training rows and turns the frame into features. Evaluation and
prediction get a `Dataset`: features already transformed the way the model's config.json says
(its `preprocessing`, or, for models from before it, numeric columns and their `scaling`).
Every problem with the input (missing file or column, a column with no values, a label the model
never saw, ...) becomes one `CliError` sentence.

Imports of pandas / scikit-learn / numpy happen inside the functions: the CLI's ``--help`` must stay
fast (see ``crossent.cli``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._csv import SEP_HELP, CsvFormat, parse_sep
from ._errors import CliError
from .columns import ColumnPlan, label
from .split import split_indices  # noqa: F401 - part of this module's interface

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from .preprocess import InputReport

# name on the command line -> (scikit-learn loader, one line for --help and `crossent data`)
BUILTINS: dict[str, tuple[str, str]] = {
    "breast-cancer": ("load_breast_cancer", "569 tumours, 30 measurements, malignant/benign"),
    "digits": ("load_digits", "1797 8x8 images of handwritten digits, 64 pixels, 10 classes"),
    "iris": ("load_iris", "150 flowers, 4 measurements, 3 species"),
    "wine": ("load_wine", "178 wines, 13 chemical measurements, 3 cultivars"),
}
BUILTIN_TARGET = "target"
DATA_HELP = (
    "A CSV file, or a data set that ships with scikit-learn (offline): "
    + ", ".join(BUILTINS)
    + ". An existing file of that name wins."
)


def sep_option(command):
    """--sep, shared by every command that reads a CSV file (arrives as `sep`)."""
    return click.option("--sep", "sep", metavar="CHAR", callback=_sep_callback, help=SEP_HELP)(
        command
    )


def _sep_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return parse_sep(value)


def model_and_data_options(command):
    """The --model DIR (a folder written by `crossent train`), --data CSV|NAME and --sep options
    that evaluate and predict share; they arrive as model_dir, source and sep."""
    command = sep_option(command)
    command = click.option("--data", "source", required=True, metavar="CSV|NAME", help=DATA_HELP)(command)
    return click.option(
        "--model", "model_dir", required=True, type=click.Path(),
        help="Model folder written by `crossent train`.",
    )(command)


def fingerprint(frame: pd.DataFrame, features: Sequence[str], labels: Sequence[str] | None) -> str:
    """sha256 of feature names, feature values and labels: identifies "the same data" across runs.

    All-numeric features hash as the float64 matrix (the fingerprint of crossent's first model
    folders, so `evaluate --split val` still recognises their data); other columns as text.
    """
    import numpy as np
    import pandas as pd

    h = hashlib.sha256()
    h.update("\x1f".join(features).encode())
    cols = [frame[f] for f in features]
    if all(pd.api.types.is_numeric_dtype(c) for c in cols):
        X = np.stack([c.to_numpy(dtype=np.float64, na_value=np.nan) for c in cols], axis=1)
        h.update(X.astype("<f8").tobytes())
    else:
        for c in cols:
            h.update("\x1e".join("\x00" if v != v else str(v) for v in c.tolist()).encode())
    if labels is not None:
        h.update("\x1f".join(labels).encode())
    return h.hexdigest()


@dataclass
class Table:
    """A labelled source for training: raw columns, labels, classes and the feature plan."""

    name: str
    frame: pd.DataFrame
    target: str
    labels: list[str]
    class_order: list[str]
    plan: ColumnPlan
    fmt: CsvFormat | None = None

    def fingerprint(self) -> str:
        return fingerprint(self.frame, self.plan.features, self.labels)


@dataclass
class Dataset:
    """Model-ready features of one source, checked.

    X         (N, D) float64, finite: the model's inputs (for `load_for_model`: raw numbers)
    labels    N label strings, or None when the source has no target column (prediction)
    """

    name: str
    X: np.ndarray
    feature_names: list[str]
    target: str | None
    labels: list[str] | None
    class_order: list[str] | None = None  # the source's own order (built-ins), else None
    frame: pd.DataFrame | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        assert self.frame is not None  # every loader keeps the frame
        return fingerprint(self.frame, self.feature_names, self.labels)


# ---------------------------------------------------------------------------------------------
# reading a source


def read_source(
    source: str, sep: str | None = None
) -> tuple[pd.DataFrame, str, str | None, list[str] | None, CsvFormat | None]:
    """(frame, display name, target column or None, class order or None, CSV format or None)."""
    from ._csv import read_csv

    path = Path(source)
    if path.is_file() or source not in BUILTINS:  # a folder named "iris" does not shadow it
        if not path.exists():
            raise CliError(
                f"no such file '{path}' and no built-in data set of that name; "
                f"give the path of a CSV file or one of: {', '.join(BUILTINS)}"
            )
        frame, fmt = read_csv(path, sep)
        return frame, str(path), None, None, fmt
    return (*_read_builtin(source), None)


def _read_builtin(name: str) -> tuple[pd.DataFrame, str, str, list[str]]:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, BUILTINS[name][0])()
    import pandas as pd

    names = [str(n) for n in getattr(bunch, "feature_names", [])]
    if len(names) != bunch.data.shape[1]:  # digits: pixel_0_0 ... pixel_7_7 in recent versions
        names = [f"x{i}" for i in range(bunch.data.shape[1])]
    frame = pd.DataFrame(bunch.data, columns=names)
    classes = [str(c) for c in bunch.target_names]
    frame[BUILTIN_TARGET] = [classes[int(i)] for i in bunch.target]
    return frame, name, BUILTIN_TARGET, classes


# ---------------------------------------------------------------------------------------------
# columns -> arrays


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


def feature_matrix(frame: pd.DataFrame, names: Sequence[str], source: str) -> np.ndarray:
    """Numeric columns as they are (models without `preprocessing` in config.json)."""
    import numpy as np
    import pandas as pd

    require_columns(frame, names, source)
    cols = []
    for n in names:
        col = frame[n]
        if col.dtype == bool:
            col = col.astype(float)
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            example = col[bad].iloc[0]
            raise CliError(
                f"column '{n}' of {source} is not numeric ({example!r} in {rows_text(bad, 1)}); "
                "this model reads numbers only, so encode it as numbers or retrain"
            )
        if num.isna().any():
            raise CliError(
                f"column '{n}' of {source} has {int(num.isna().sum())} missing value(s) "
                f"({rows_text(num.isna())}); this model cannot impute, so fill them or retrain"
            )
        cols.append(num.to_numpy(dtype=np.float64))
    X = np.stack(cols, axis=1) if cols else np.zeros((len(frame), 0))
    if not np.isfinite(X).all():
        bad_col = names[int(np.flatnonzero(~np.isfinite(X).all(axis=0))[0])]
        raise CliError(f"column '{bad_col}' of {source} has infinite values; replace them first")
    return X


def label_strings(frame: pd.DataFrame, target: str, source: str) -> list[str]:
    """The target column as strings; integral numbers print without '.0' (1.0 -> '1')."""
    col = frame[target]
    if col.isna().any():
        raise CliError(
            f"the target column '{target}' of {source} has {int(col.isna().sum())} missing "
            f"label(s) ({rows_text(col.isna())}); fill or drop those rows first"
        )
    return [label(v) for v in col.tolist()]


def sorted_classes(frame: pd.DataFrame, target: str, labels: list[str]) -> list[str]:
    """Numbers in numeric order (2 < 10), everything else in text order."""
    import pandas as pd

    uniq = sorted(set(labels))
    if pd.api.types.is_numeric_dtype(frame[target]) and not pd.api.types.is_bool_dtype(
        frame[target]
    ):
        return sorted(uniq, key=float)
    return uniq


def check_target(frame: pd.DataFrame, target: str | None, source: str) -> str:
    if target is None:
        raise CliError(f"{source} is a CSV file, so name its label column with --target COLUMN")
    if target not in frame.columns:
        cols = ", ".join(repr(c) for c in list(frame.columns)[:10])
        raise CliError(f"{source} has no column '{target}'; pick --target from its columns: {cols}")
    return target


# ---------------------------------------------------------------------------------------------
# the ways commands load data


def load_for_training(
    source: str,
    target: str | None = None,
    features: Sequence[str] | None = None,
    *,
    sep: str | None = None,
    **columns: Any,
) -> Table:
    """Raw columns + labels + class list + feature plan for `train`; at least two classes.

    `columns` are `columns.plan_columns`' options (drop, keep, categorical, numeric, dates).
    """
    from .columns import plan_columns

    frame, name, builtin_target, class_order, fmt = read_source(source, sep)
    if builtin_target is not None:
        if target not in (None, builtin_target):
            raise CliError(
                f"the built-in data set {name} has its labels in '{builtin_target}'; "
                "leave out --target"
            )
        target = builtin_target
    target = check_target(frame, target, name)
    if features and target in features:
        raise CliError(f"'{target}' is the target, so leave it out of --features")
    labels = label_strings(frame, target, name)
    plan = plan_columns(frame, target, name, labels=labels, features=features, **columns)
    classes = class_order or sorted_classes(frame, target, labels)
    present = [c for c in classes if c in set(labels)]
    if len(present) < 2:
        raise CliError(
            f"the target column '{target}' of {name} holds a single class ({present[0]!r}); "
            "a classifier needs at least two, so check --target or add rows of other classes"
        )
    return Table(name, frame, target, labels, classes, plan, fmt)


def load_for_model(
    source: str,
    feature_names: Sequence[str],
    target: str | None,
    *,
    need_target: bool,
    sep: str | None = None,
) -> Dataset:
    """Raw numeric features in the model's order (+ labels when `need_target`, else when present)."""
    frame, name, builtin_target, _, _ = read_source(source, sep)
    if builtin_target is not None:
        target = builtin_target
    X = feature_matrix(frame, list(feature_names), name)
    return Dataset(name, X, list(feature_names), target, _labels(frame, target, name, need_target), None, frame)


def model_source(
    config: dict[str, Any],
    source: str,
    target: str | None,
    *,
    need_target: bool,
    sep: str | None = None,
) -> Dataset:
    """The rows a model will read, untransformed (X has no columns yet: see `model_inputs`);
    labels when `need_target`, else when present."""
    import numpy as np

    frame, name, builtin_target, _, _ = read_source(source, sep)
    if builtin_target is not None:
        target = builtin_target
    require_columns(frame, list(config["features"]), name)
    labels = _labels(frame, target, name, need_target)
    return Dataset(name, np.zeros((len(frame), 0)), list(config["features"]), target, labels, None, frame)


def model_inputs(
    config: dict[str, Any], ds: Dataset, rows: Any = None
) -> tuple[np.ndarray, InputReport]:
    """(N, D) model inputs of `ds`'s rows (all, or `rows`), transformed as the model's config.json
    says, and what had to be filled in on those rows."""
    from . import preprocess
    from .models import scale

    assert ds.frame is not None
    frame = ds.frame if rows is None else ds.frame.iloc[rows]
    spec = config.get("preprocessing")
    if spec:
        return preprocess.transform(spec, frame, ds.name)
    # a model folder from before `preprocessing`: numeric columns and their scaling
    X = scale(feature_matrix(frame, list(config["features"]), ds.name), config["scaling"])
    return X, preprocess.InputReport()


def _labels(frame: pd.DataFrame, target: str | None, name: str, need: bool) -> list[str] | None:
    if target is not None and target in frame.columns:
        return label_strings(frame, target, name)
    if need:
        check_target(frame, target, name)
    return None


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
