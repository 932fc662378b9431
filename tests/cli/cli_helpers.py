"""Helpers for the command-line tests: run commands in-process, write small CSVs, shared models.

Commands run in-process through click's CliRunner (torch, scikit-learn and matplotlib are imported
once for the whole session); a few tests use a real subprocess where only that can tell (imports,
the console script, tracebacks).

Not a conftest.py: the suite's other tests import `conftest` by name from tests/, and a second
conftest.py on sys.path would shadow it.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from crossent.cli import main


def run(*args: object, expect: int | None = 0) -> Result:
    """Invoke `crossent ARGS...`; with `expect`, check the exit code and show output on failure."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="crossent")
    if expect is not None and result.exit_code != expect:
        raise AssertionError(
            f"crossent {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\nexception: {result.exception!r}"
        )
    return result


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def toy_rows(n: int = 60) -> list[list[object]]:
    """Two numeric features and a text label with three classes, easily separable."""
    rows: list[list[object]] = []
    for i in range(n):
        c = i % 3
        rows.append([c + 0.1 * (i % 7), c * 2.0 - 0.05 * (i % 5), ["cat", "dog", "eel"][c]])
    return rows


TOY_HEADER = ["height", "weight", "animal"]

_shared = Path(tempfile.mkdtemp(prefix="crossent-cli-tests-"))
atexit.register(shutil.rmtree, _shared, ignore_errors=True)


@functools.cache
def trained(name: str) -> Path:
    """Small models trained once per session, for the tests that only read them."""
    out = _shared / name
    if name == "iris":  # multi-class MLP
        run(
            "train",
            "--data",
            "iris",
            "--out",
            out,
            "--epochs",
            "8",
            "--lr",
            "0.01",
            "--hidden",
            "16",
            "-q",
        )
    elif name == "cancer":  # binary, linear
        run(
            "train",
            "--data",
            "breast-cancer",
            "--out",
            out,
            "--model",
            "linear",
            "--epochs",
            "5",
            "-q",
        )
    elif name == "toy":  # a CSV with text labels
        csv_path = write_csv(_shared / "toy.csv", TOY_HEADER, toy_rows())
        run(
            "train",
            "--data",
            csv_path,
            "--target",
            "animal",
            "--out",
            out,
            "--epochs",
            "15",
            "--lr",
            "0.02",
            "-q",
        )
    else:
        raise KeyError(name)
    return out
