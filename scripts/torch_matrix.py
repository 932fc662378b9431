"""Helpers of scripts/test-torch (standard library only: it runs before a venv has anything).

    python3 scripts/torch_matrix.py constraints OUT [NAMES]   the lock without the pins of its
        torch build and of NAMES (what the installed torch requires); prints the names left out
    python3 scripts/torch_matrix.py record VERSION JUNIT PYTHON SCOPE SECONDS   add the run to the
        results file and rewrite the README's table from it
    python3 scripts/torch_matrix.py render   rewrite the README's table from the results file

Results file: tests/torch_versions.json, one entry per torch version (the last run of each),
committed; the README's table between <!-- torch-matrix:begin --> and <!-- torch-matrix:end -->
is rendered from it, and tests/test_torch_matrix.py checks that the two agree.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / "torch_versions.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- torch-matrix:begin -->", "<!-- torch-matrix:end -->"

# Pins of the lock that belong to one torch build (its CUDA libraries, its Triton): dropped for
# any other torch, which brings its own.
TORCH_BUILD = re.compile(r"^(torch|triton|nvidia-[\w-]+|cuda-[\w-]+)(==| )", re.IGNORECASE)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def constraints(out: str, torch_requires: str = "") -> None:
    """constraints.txt without the pins of one torch build: torch, its CUDA libraries and Triton,
    and whatever this torch itself requires (``torch_requires``, comma-separated names: torch
    2.11 needs setuptools < 82, the lock has 84). Prints the names left out."""
    drop = {n.strip().lower() for n in torch_requires.split(",") if n.strip()}
    lines, dropped = [], set()
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if TORCH_BUILD.match(line) or ("==" in line and name in drop):
            dropped.add(name)
            continue
        lines.append(line)
    pathlib.Path(out).write_text("\n".join(lines) + "\n")
    print(",".join(sorted(dropped)))  # for CROSSENT_UNLOCKED_PACKAGES (tests/lockfile.py)


def _counts(junit: str) -> dict[str, int]:
    """passed / skipped / failed (failures + errors) from pytest's JUnit XML."""
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = total["failures"] + total["errors"]
    return dict(passed=total["tests"] - failed - total["skipped"], skipped=total["skipped"], failed=failed)


def record(version: str, junit: str, python: str, scope: str, seconds: str) -> None:
    installed = json.loads(subprocess.run(
        [python, "-c", "import importlib.metadata as md, json, sys, torch\n"
         "def v(n):\n    try: return md.version(n)\n    except md.PackageNotFoundError: return None\n"
         "print(json.dumps(dict(torch=torch.__version__, python='.'.join(map(str, sys.version_info[:3])),"
         " triton=v('triton'), transformers=v('transformers'), numpy=v('numpy'))))"],
        check=True, capture_output=True, text=True).stdout)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[version] = dict(
        date=datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        scope=scope, seconds=round(float(seconds)), **installed, **_counts(junit),
    )
    results = dict(sorted(results.items(), key=lambda kv: _version(kv[0])))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    render()


def table(results: dict) -> str:
    rows = ["| torch | date | Python | what ran | passed | skipped | failed | minutes |",
            "|---|---|---|---|---|---|---|---|"]
    for version, r in results.items():
        rows.append(f"| {r['torch']} | {r['date']} | {r['python']} | {r['scope']} | {r['passed']} | "
                    f"{r['skipped']} | {r['failed']} | {minutes(r['seconds'])} |")
    return "\n".join(rows)


def minutes(seconds: int) -> str:
    """Wall time of the run, as the table shows it (on a shared 2-core machine: see the README)."""
    return f"{seconds / 60:.0f}"


def render() -> None:
    text = README.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(json.loads(RESULTS.read_text())) + "\n" + text[stop:])


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"constraints": constraints, "record": record, "render": render}[command](*args)
