"""Data for the command line: scikit-learn's built-in data sets, files (`readers`: CSV, TSV,
Parquet, Excel, JSON Lines) and pandas DataFrames (the Python API), checked once here.

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

from ._cells import require_columns, rows_text
from ._csv import SEP_HELP, parse_sep
from ._errors import CliError
from .columns import ColumnPlan
from .split import split_indices  # noqa: F401 - part of this module's interface
from .target import check_target, encode_labels, label_strings, sorted_classes  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from .preprocess import InputReport
    from .readers import SourceFormat

# name on the command line -> (scikit-learn loader, one line for --help and `crossent data`)
BUILTINS: dict[str, tuple[str, str]] = {
    "breast-cancer": ("load_breast_cancer", "569 tumours, 30 measurements, malignant/benign"),
    "digits": ("load_digits", "1797 8x8 images of handwritten digits, 64 pixels, 10 classes"),
    "iris": ("load_iris", "150 flowers, 4 measurements, 3 species"),
    "wine": ("load_wine", "178 wines, 13 chemical measurements, 3 cultivars"),
}
BUILTIN_TARGET = "target"
DATA_HELP = (
    "A table file (CSV, TSV, Parquet, Excel .xlsx, JSON Lines; gzip/bz2/xz/zip-compressed CSV "
    "too), or a data set that ships with scikit-learn (offline): "
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
    command = click.option("--data", "source", required=True, metavar="FILE|NAME", help=DATA_HELP)(
        command
    )
    return click.option(
        "--model",
        "model_dir",
        required=True,
        type=click.Path(),
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
    fmt: SourceFormat | None = None

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
    source: str | pd.DataFrame, sep: str | None = None
) -> tuple[pd.DataFrame, str, str | None, list[str] | None, SourceFormat | None]:
    """(frame, display name, target column or None, class order or None, format or None).

    `source` is a file, a built-in name, or a pandas DataFrame (the Python API; copied, never
    changed)."""
    from .readers import SourceFormat, normalised, read_table

    if not isinstance(source, str):
        if len(source) == 0:
            raise CliError("the DataFrame has no rows; give one with a header and data rows")
        return normalised(source), "DataFrame", None, None, SourceFormat("dataframe")
    path = Path(source)
    if path.is_file() or source not in BUILTINS:  # a folder named "iris" does not shadow it
        if not path.exists():
            raise CliError(
                f"no such file '{path}' and no built-in data set of that name; "
                f"give the path of a CSV file or one of: {', '.join(BUILTINS)}"
            )
        frame, fmt = read_table(path, sep)
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


def load_for_training(
    source: str | pd.DataFrame,
    target: str | None = None,
    features: Sequence[str] | None = None,
    *,
    sep: str | None = None,
    classification: bool = False,
    **columns: Any,
) -> Table:
    """Raw columns + labels + class list + feature plan for `train`; at least two classes, and
    classes rather than a quantity or an id unless `classification` (`target.check_classes`).

    `columns` are `columns.plan_columns`' options (drop, keep, categorical, numeric, dates).
    """
    from .columns import plan_columns
    from .target import check_classes

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
    check_classes(frame, target, labels, name, classification)
    decimal = fmt.decimal if fmt else "."
    plan = plan_columns(
        frame, target, name, labels=labels, features=features, decimal=decimal, **columns
    )
    classes = class_order or sorted_classes(frame, target, labels)
    return Table(name, frame, target, labels, classes, plan, fmt)


def load_for_model(
    source: str | pd.DataFrame,
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
    return Dataset(
        name, X, list(feature_names), target, _labels(frame, target, name, need_target), None, frame
    )


def model_source(
    config: dict[str, Any],
    source: str | pd.DataFrame,
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
    return Dataset(
        name, np.zeros((len(frame), 0)), list(config["features"]), target, labels, None, frame
    )


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
