"""The click group `crossent` and its lazily imported commands (see ``crossent.cli``)."""

from __future__ import annotations

import importlib
from typing import Any

import click

from ._errors import CliError

# command name -> "module:function", in the order --help lists them
COMMANDS = {
    "demo": "demo:demo",
    "train": "train:train",
    "evaluate": "evaluate:evaluate",
    "predict": "predict:predict",
    "explain": "explain:explain",
    "data": "describe:data_command",
    "bench": "bench:bench",
}


# import name -> package name, for the dependencies of the `cli` extra
CLI_EXTRA = {
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "pandas": "pandas",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "scipy": "scipy (a scikit-learn dependency)",
    "numpy": "numpy",
}


class LazyGroup(click.Group):
    """click's documented lazy-loading pattern: import a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in CLI_EXTRA:
                raise
            raise CliError(
                f"this command needs {CLI_EXTRA[top]}, which is not installed; install the "
                "command line's dependencies with: pip install 'crossent[cli]'"
            ) from None


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run `crossent COMMAND --help` for each command's options and examples.",
)
@click.version_option(package_name="crossent", prog_name="crossent")
def main() -> None:
    """Cross-entropy, from the formula to a trained and evaluated classifier.

    \b
    A typical session:
      crossent demo                                   the tutorial, reproduced, then fixed
      crossent explain --probs 0.2,0.7,0.1 --target 1 the loss step by step (0.3567)
      crossent train --data breast-cancer --out runs/bc
      crossent evaluate --model runs/bc --data breast-cancer
      crossent predict --model runs/bc --data new_rows.csv --out predictions.csv

    Data is a table file (`--data FILE --target COLUMN`: CSV with any delimiter, also gzip, bz2,
    xz or zip-compressed, TSV, Parquet, Excel .xlsx, JSON Lines; text, dates, missing values and
    numbers like '1,234' or '$5'; `crossent data FILE` shows what train will make of it) or one
    of scikit-learn's built-in data sets (breast-cancer, digits, iris, wine). Models are
    saved as safetensors plus a JSON description, preprocessing included; pickle files are never
    read or written.

    Bad input (a missing file or column, a column with no values, a single class, ...) ends with
    one sentence on stderr and exit code 2.
    """


def run(argv: list[str] | None = None) -> Any:
    """Entry point for ``python -m crossent``."""
    return main(args=argv, prog_name="crossent")
