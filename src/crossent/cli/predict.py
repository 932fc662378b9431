"""`crossent predict`: class and class probabilities for every row, as CSV."""

from __future__ import annotations

import click

from .data import model_and_data_options


@click.command(short_help="Predicted class and class probabilities per row, as CSV.")
@model_and_data_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="CSV file to write (default: print to standard output).",
)
@click.option(
    "--keep-columns", is_flag=True, help="Put the input's columns before the predictions."
)
def predict(
    model_dir: str, source: str, sep: str | None, out: str | None, keep_columns: bool
) -> None:
    """Predict the class of every row, with one probability column per class.

    The data needs the columns the model was trained on (other columns, including the label,
    are ignored); they are transformed as in training (the medians, categories and scaling saved
    in the model). Missing values are imputed and categories never seen in training are encoded
    as 'other'; how many of each is said on stderr. Output columns: predicted, then prob_<class>
    for each class, which sum to 1. Probabilities are written with full precision, so they
    round-trip exactly.

    \b
    Examples:
      crossent predict --model runs/bc --data new_rows.csv --out predictions.csv
      crossent predict --model runs/iris --data iris --keep-columns | head
    """
    import pandas as pd

    from . import _files, models, store
    from . import data as data_mod
    from .api import prediction_table

    model, config = store.load_model(model_dir)
    ds = data_mod.model_source(config, source, None, need_target=False, sep=sep)
    X, inputs = data_mod.model_inputs(config, ds)
    for line in inputs.lines():
        click.echo(line, err=True)
    table = prediction_table(models.probabilities(model, X, config["task"]), config["classes"])
    if keep_columns and ds.frame is not None:
        table = pd.concat([ds.frame.reset_index(drop=True), table], axis=1)
    text = table.to_csv(index=False)
    if out:
        _files.write_text(out, text)
        click.echo(f"wrote {len(table)} predictions to {out}", err=True)
    else:
        click.echo(text, nl=False)
