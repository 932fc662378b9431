"""Data for the command line: scikit-learn's built-in data sets and CSV files, checked once here.

Everything downstream gets a `Dataset`: a float64 feature matrix with no NaN, the feature names in
column order, and labels as strings (so ``1``, ``1.0`` and ``"1"`` in a CSV are the same class).
Every problem with the input (missing file or column, non-numeric values, NaN, a single class, a
label the model never saw) becomes one `CliError` sentence here.

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

from ._errors import CliError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

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


def model_and_data_options(command):
    """The --model DIR (a folder written by `crossent train`) and --data CSV|NAME options that
    evaluate and predict share; they arrive as model_dir and source."""
    command = click.option("--data", "source", required=True, metavar="CSV|NAME", help=DATA_HELP)(command)
    return click.option(
        "--model", "model_dir", required=True, type=click.Path(),
        help="Model folder written by `crossent train`.",
    )(command)


@dataclass
class Dataset:
    """Features and labels of one source, checked.

    X         (N, D) float64, finite
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
        """sha256 of features, feature names and labels: identifies "the same data" across runs."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.feature_names).encode())
        h.update(self.X.astype("<f8").tobytes())
        if self.labels is not None:
            h.update("\x1f".join(self.labels).encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading a source


def read_source(source: str) -> tuple[pd.DataFrame, str, str | None, list[str] | None]:
    """(frame, display name, target column or None, class order or None) of a CSV or built-in."""
    path = Path(source)
    if path.is_file() or source not in BUILTINS:  # a folder named "iris" does not shadow it
        return _read_csv(path), str(path), None, None
    return _read_builtin(source)


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


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        raise CliError(
            f"no such file '{path}' and no built-in data set of that name; "
            f"give the path of a CSV file or one of: {', '.join(BUILTINS)}"
        )
    if path.is_dir():
        raise CliError(f"'{path}' is a folder, not a CSV file; give the path of a CSV file")
    if path.suffix.lower() in {".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".safetensors"}:
        raise CliError(f"'{path}' is a model file, not data; give a CSV file with --data")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CliError(f"'{path}' is empty; give a CSV file with a header row and data rows")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CliError(f"'{path}' could not be read as CSV ({first}); check that it is a CSV file")
    if len(frame) == 0:
        raise CliError(f"'{path}' has a header but no data rows; add rows to the file")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


# ---------------------------------------------------------------------------------------------
# columns -> arrays


def _rows(mask: Any, limit: int = 5) -> str:
    """'data rows 3, 7 and 2 more' (1-based, counting data rows after the header)."""
    import numpy as np

    idx = np.flatnonzero(np.asarray(mask)) + 1
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"data row{'s' if len(idx) > 1 else ''} {shown}{more}"


def feature_matrix(frame: pd.DataFrame, names: Sequence[str], source: str) -> np.ndarray:
    import numpy as np
    import pandas as pd

    missing = [n for n in names if n not in frame.columns]
    if missing:
        listed = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CliError(
            f"{source} lacks the feature column(s) {listed}; "
            f"use data with the columns {', '.join(list(names)[:8])}{' ...' if len(names) > 8 else ''}"
        )
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
                f"column '{n}' of {source} is not numeric ({example!r} in {_rows(bad, 1)}); "
                "encode it as numbers or leave it out with --features"
            )
        if num.isna().any():
            raise CliError(
                f"column '{n}' of {source} has {int(num.isna().sum())} missing value(s) "
                f"({_rows(num.isna())}); fill or drop those rows first"
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
            f"label(s) ({_rows(col.isna())}); fill or drop those rows first"
        )
    return [_label(v) for v in col.tolist()]


def _label(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _sorted_classes(frame: pd.DataFrame, target: str, labels: list[str]) -> list[str]:
    """Numbers in numeric order (2 < 10), everything else in text order."""
    import pandas as pd

    uniq = sorted(set(labels))
    if pd.api.types.is_numeric_dtype(frame[target]):
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
# the two ways commands load data


def load_for_training(
    source: str, target: str | None = None, features: Sequence[str] | None = None
) -> Dataset:
    """Features + labels + class list for `train`; at least two classes."""
    frame, name, builtin_target, class_order = read_source(source)
    if builtin_target is not None:
        if target not in (None, builtin_target):
            raise CliError(
                f"the built-in data set {name} has its labels in '{builtin_target}'; "
                "leave out --target"
            )
        target = builtin_target
    target = check_target(frame, target, name)
    if features:
        feats = list(features)
        if target in feats:
            raise CliError(f"'{target}' is the target, so leave it out of --features")
    else:
        feats = [c for c in frame.columns if c != target]
    if not feats:
        raise CliError(f"{name} has no feature columns besides '{target}'; add feature columns")
    X = feature_matrix(frame, feats, name)
    labels = label_strings(frame, target, name)
    classes = class_order or _sorted_classes(frame, target, labels)
    present = [c for c in classes if c in set(labels)]
    if len(present) < 2:
        raise CliError(
            f"the target column '{target}' of {name} holds a single class ({present[0]!r}); "
            "a classifier needs at least two, so check --target or add rows of other classes"
        )
    return Dataset(name, X, feats, target, labels, classes, frame)


def load_for_model(
    source: str, feature_names: Sequence[str], target: str | None, *, need_target: bool
) -> Dataset:
    """Features in the model's order (+ labels when `need_target`, else when present)."""
    frame, name, builtin_target, _ = read_source(source)
    if builtin_target is not None:
        target = builtin_target
    X = feature_matrix(frame, list(feature_names), name)
    labels = None
    if target is not None and target in frame.columns:
        labels = label_strings(frame, target, name)
    elif need_target:
        check_target(frame, target, name)
    return Dataset(name, X, list(feature_names), target, labels, None, frame)


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


def split_indices(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): stratified by class when every class has two rows or more."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    if val_fraction <= 0:
        return rows, rows[:0]
    try:
        tr, va = train_test_split(rows, test_size=val_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class with a single row, or fewer validation rows than classes
        tr, va = train_test_split(rows, test_size=val_fraction, random_state=seed)
    if len(tr) == 0:
        raise CliError(f"--val-split {val_fraction} leaves no training rows; use a smaller value")
    return np.sort(tr), np.sort(va)


# ---------------------------------------------------------------------------------------------
# the `crossent data` command


@click.command("data", short_help="List the built-in data sets or describe one.")
@click.argument("source", required=False)
@click.option("--target", help="Label column of a CSV file (built-ins know theirs).")
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False),
    help="Write the data set to this CSV file (features, then the label column).",
)
def data_command(source: str | None, target: str | None, export: str | None) -> None:
    """List the built-in data sets, or describe one data set (rows, columns, classes).

    \b
    Examples:
      crossent data                              the built-in data sets
      crossent data wine                         rows, features and class counts of one
      crossent data iris --export iris.csv       a built-in as a CSV file, to try the CSV path
      crossent data my.csv --target label        check a CSV file before training on it
    """
    if source is None:
        click.echo("Built-in data sets (from scikit-learn, offline):")
        for name, (_, about) in BUILTINS.items():
            click.echo(f"  {name:<14} {about}")
        click.echo(
            "Use one with --data NAME, or export it with `crossent data NAME --export FILE`."
        )
        return
    ds = load_for_training(source, target)
    from collections import Counter

    counts = Counter(ds.labels or [])
    click.echo(
        f"{ds.name}: {ds.X.shape[0]} rows, {ds.X.shape[1]} numeric features, target '{ds.target}'"
    )
    shown = ", ".join(ds.feature_names[:8]) + (" ..." if len(ds.feature_names) > 8 else "")
    click.echo(f"features: {shown}")
    click.echo("classes:  " + ", ".join(f"{c} ({counts[c]})" for c in ds.class_order or []))
    if export:
        from . import _files

        frame = ds.frame if ds.frame is not None else read_source(source)[0]
        _files.write_text(export, frame.to_csv(index=False))
        click.echo(f"wrote {export}")
