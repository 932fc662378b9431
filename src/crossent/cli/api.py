"""The command line's workflow from Python: train on a pandas DataFrame (or a file), predict,
measure. The same code as `crossent train / predict / evaluate`, without the shell:

    >>> from crossent.cli import api
    >>> result = api.train(frame, target="species", out="runs/penguins")
    >>> api.predict("runs/penguins", new_rows)           # DataFrame: predicted, prob_<class>...
    >>> api.evaluate("runs/penguins", test_rows)["accuracy"]

Options are `config.FitOptions`' fields (epochs, lr, model kind, ...) and the column options of
`crossent train` (drop, keep, categorical, numeric, dates, max_categories). The caller's frame is
copied, never changed. Bad input raises `CliError` (a click.ClickException) whose `message` is
the command line's one sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FitOptions

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .fitting import FitResult

COLUMN_OPTIONS = ("drop", "keep", "categorical", "numeric", "dates")


def train(
    data: pd.DataFrame | str | Path,
    target: str | None = None,
    *,
    out: str | Path,
    features: Sequence[str] | None = None,
    classification: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    sep: str | None = None,
    **options: Any,
) -> FitResult:
    """Fit a classifier to `data`'s `target` column and save the model folder `out`."""
    from . import data as data_mod
    from . import fitting

    columns = {k: options.pop(k) for k in COLUMN_OPTIONS if k in options}
    if "hidden" in options:
        options["hidden"] = tuple(options["hidden"])
    opts = FitOptions(**options)
    source = data if not isinstance(data, Path) else str(data)
    table = data_mod.load_for_training(
        source, target, list(features) if features else None, sep=sep,
        classification=classification, **columns,
    )  # fmt: skip
    return fitting.fit(table, opts, Path(out), resume=resume, overwrite=overwrite, quiet=quiet)


def _inputs(model: str | Path, data: Any, need_target: bool) -> tuple[Any, dict, Any, Any]:
    from . import data as data_mod
    from . import store

    net, config = store.load_model(model)
    source = data if not isinstance(data, Path) else str(data)
    ds = data_mod.model_source(config, source, config.get("target"), need_target=need_target)
    X, _ = data_mod.model_inputs(config, ds)
    return net, config, ds, X


def predict(model: str | Path, data: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Per row of `data`: the predicted class and one prob_<class> column per class."""
    from . import models

    net, config, _, X = _inputs(model, data, need_target=False)
    return prediction_table(models.probabilities(net, X, config["task"]), config["classes"])


def prediction_table(probs: Any, classes: Sequence[str]) -> pd.DataFrame:
    """(N, K) probabilities -> predicted (the most probable class) and prob_<class> columns."""
    import pandas as pd

    table = pd.DataFrame({"predicted": [classes[i] for i in probs.argmax(axis=1)]})
    for i, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, i]
    return table


def evaluate(model: str | Path, data: pd.DataFrame | str | Path) -> dict[str, Any]:
    """`crossent evaluate`'s numbers (accuracy, log loss, F1, ...) on every row of `data`."""
    from . import models
    from .metrics import compute_metrics
    from .target import encode_labels

    net, config, ds, X = _inputs(model, data, need_target=True)
    y = encode_labels(ds.labels or [], config["classes"], ds.name)
    return compute_metrics(y, models.probabilities(net, X, config["task"]), config["classes"])
