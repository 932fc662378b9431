"""The one way the command line reports a problem with its input: a sentence, exit code 2.

Every bad input (missing file or column, NaN, a pickle checkpoint, ...) raises `CliError` with one
sentence that names the problem and the fix. Click prints it as ``Error: <sentence>`` on stderr and
exits with `exit_code`, without a traceback.
"""

from __future__ import annotations

import click


class CliError(click.ClickException):
    """A problem with what the user gave us; exits with code 2 like click's own usage errors."""

    exit_code = 2
