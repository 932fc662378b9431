"""The `crossent` command line: a thin layer of click commands over the library.

Each command lives in its own module and is imported only when it runs (or when ``--help`` lists
it); those modules import only click at the top and torch / scikit-learn / matplotlib / pandas
inside their functions, so ``crossent --help`` itself needs none of them.

Without the `cli` extra (click and friends), `crossent` says how to install it instead of failing
with an ImportError.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from ._main import COMMANDS, main, run
except ModuleNotFoundError as e:  # pragma: no cover - exercised in a subprocess by the tests
    if e.name != "click":
        raise
    COMMANDS = {}

    def main(*args: Any, **kwargs: Any) -> Any:
        sys.stderr.write(
            "Error: the crossent command line needs click, which is not installed; install "
            "its dependencies with: pip install 'crossent[cli]'\n"
        )
        raise SystemExit(2)

    run = main

__all__ = ["COMMANDS", "main", "run"]
