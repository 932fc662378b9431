"""The README's tested-torch table stays true: it is the last results of scripts/test-torch
(tests/torch_versions.json), it has a row for every version of the script's matrix, the floor of
pyproject.toml is the oldest of them, and every row passed (a version whose run failed is not a
version crossent claims)."""

from __future__ import annotations

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = json.loads((ROOT / "tests" / "torch_versions.json").read_text())
README = (ROOT / "README.md").read_text()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _matrix() -> list[str]:
    (line,) = re.findall(r'^MATRIX="([^"]+)"', (ROOT / "scripts" / "test-torch").read_text(), re.M)
    return line.split()


def _table() -> list[dict[str, str]]:
    body = README[README.index("<!-- torch-matrix:begin -->"):README.index("<!-- torch-matrix:end -->")]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_the_readme_table_is_the_last_results():
    rows = _table()
    assert [r["torch"] for r in rows] == [r["torch"] for r in RESULTS.values()]
    for row, (version, result) in zip(rows, RESULTS.items()):
        assert row == {
            "torch": result["torch"], "date": result["date"], "Python": result["python"],
            "what ran": result["scope"], "passed": str(result["passed"]),
            "skipped": str(result["skipped"]), "failed": str(result["failed"]),
        }, f"README row for torch {version} differs from tests/torch_versions.json: run scripts/torch_matrix.py render"


def test_every_version_of_the_matrix_ran_and_passed():
    assert list(RESULTS) == sorted(_matrix(), key=_version), (
        "tests/torch_versions.json must hold the last run of each version of scripts/test-torch's "
        "MATRIX, and only those: scripts/test-torch --matrix")
    for version, result in RESULTS.items():
        assert _version(result["torch"]) == _version(version), (version, result["torch"])
        assert result["failed"] == 0, f"torch {version}: {result['failed']} tests failed"
        assert result["passed"] > 1000, f"torch {version}: only {result['passed']} tests passed"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", result["date"])


def test_the_torch_floor_is_the_oldest_version_tested():
    pyproject = (ROOT / "pyproject.toml").read_text()
    (floor,) = re.findall(r'"torch>=([\d.]+)"', pyproject)
    oldest = min(RESULTS, key=_version)
    padded = _version(floor) + (0,) * (3 - len(_version(floor)))  # "2.4" is 2.4.0
    assert padded == _version(oldest), f"pyproject's torch>={floor} is not the oldest torch tested ({oldest})"
    assert f"torch>={floor}" in README


def test_the_locked_torch_ran_the_whole_suite():
    lock = (ROOT / "constraints.txt").read_text()
    (locked,) = re.findall(r"^torch==([\d.]+)", lock, re.M)
    assert RESULTS[locked]["scope"] == "whole suite"
