"""--help is a usable manual, answers fast, and imports none of the heavy libraries."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from cli_helpers import run

from crossent.cli import COMMANDS

HEAVY = ["torch", "sklearn", "matplotlib", "pandas", "safetensors", "scipy", "tqdm"]


def test_main_help_lists_every_command():
    out = run("--help").stdout
    for name in COMMANDS:
        assert f"  {name} " in out
    assert "crossent explain --probs 0.2,0.7,0.1 --target 1" in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help_with_examples(name):
    out = run(name, "--help").stdout
    assert f"Usage: crossent {name}" in out
    assert "Example" in out, f"`crossent {name} --help` shows no example"


@functools.cache
def _modules_after(code: str) -> frozenset[str]:
    probe = (
        "import sys, json\n" + code + "\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return frozenset(json.loads(out.stdout.strip().splitlines()[-1]))


HELP = (
    "from crossent.cli import main\n"
    "try:\n    main(['--help'], prog_name='crossent')\nexcept SystemExit:\n    pass\n"
    "for c in " + repr(list(COMMANDS)) + ":\n"
    "    try:\n        main([c, '--help'], prog_name='crossent')\n    except SystemExit:\n        pass"
)


def test_help_imports_no_heavy_library_beyond_the_core_package():
    """The CLI layer itself adds none of torch/sklearn/matplotlib/pandas/... to `import crossent`."""
    assert _modules_after(HELP) <= _modules_after("import crossent")


def test_help_does_not_import_torch():
    assert "torch" not in _modules_after("import crossent")  # public names load lazily
    assert "torch" not in _modules_after(HELP)


def test_python_dash_m_crossent():
    out = subprocess.run(
        [sys.executable, "-m", "crossent", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("Usage: crossent ")


def test_version():
    assert "crossent, version" in run("--version").stdout


@pytest.mark.parametrize(
    "blocked, args, message",
    [
        ("click", "[]", "needs click, which is not installed"),
        ("sklearn", "['data', 'iris']", "needs scikit-learn, which is not installed"),
    ],
)
def test_missing_cli_extra_says_how_to_install(tmp_path, blocked, args, message):
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        f"from crossent.cli import main\nmain({args}, prog_name='crossent')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "pip install 'crossent[cli]'" in proc.stderr
    assert "Traceback" not in proc.stderr
