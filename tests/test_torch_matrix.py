"""The README's tested-torch table stays true: it is the last results of scripts/test-torch
(tests/torch_versions.json), it has a row for every version of the script's matrix, the floor of
pyproject.toml is the oldest of them, and every row passed (a version whose run failed is not a
version crossent claims). Skipped inside a matrix run (CROSSENT_TORCH_MATRIX_RUN), whose
results are still being written."""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = json.loads((ROOT / "tests" / "torch_versions.json").read_text())
README = (ROOT / "README.md").read_text()
SCRIPT = (ROOT / "scripts" / "test-torch").read_text()

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("CROSSENT_TORCH_MATRIX_RUN")),
    reason="inside scripts/test-torch: the results file is being written by this run")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _matrix() -> list[str]:
    (line,) = re.findall(r'^MATRIX="([^"]+)"', SCRIPT, re.M)
    return line.split()


def _subset() -> list[str]:
    (files,) = re.findall(r'^SUBSET="([^"]+)"', SCRIPT, re.M)
    return files.split()


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
            "minutes": f"{result['seconds'] / 60:.0f}",
        }, f"README row for torch {version} differs from tests/torch_versions.json: run scripts/torch_matrix.py render"


def test_every_version_of_the_matrix_ran():
    assert list(RESULTS) == sorted(_matrix(), key=_version), (
        "tests/torch_versions.json must hold the last run of each version of scripts/test-torch's "
        "MATRIX, and only those: scripts/test-torch --matrix")
    for version, result in RESULTS.items():
        assert _version(result["torch"]) == _version(version), (version, result["torch"])
        assert result["scope"] in ("whole suite", "subset"), (version, result["scope"])
        assert result["passed"] > (1000 if result["scope"] == "subset" else 4000), (
            f"torch {version}: only {result['passed']} tests passed")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", result["date"])


def test_the_torch_floor_is_the_oldest_version_that_passed():
    """A version whose run failed is in the table (what was tried) but not claimed: the floor is
    the oldest version whose run had no failure."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    (floor,) = re.findall(r'"torch>=([\d.]+)"', pyproject)
    passed = [v for v, r in RESULTS.items() if r["failed"] == 0]
    assert passed, "no torch of the matrix passed: nothing can be claimed"
    oldest = min(passed, key=_version)
    padded = _version(floor) + (0,) * (3 - len(_version(floor)))  # "2.4" is 2.4.0
    assert padded == _version(oldest), f"pyproject's torch>={floor} is not the oldest torch that passed ({oldest})"
    assert f"torch>={floor}" in README


def test_the_subset_covers_every_backend_and_public_area():
    """--subset (what the older torches ran): real test files, one for every backend folder
    (tests/backends/*), and the distributed, integrations and command-line areas."""
    files = _subset()
    assert all((ROOT / f).is_file() for f in files), [f for f in files if not (ROOT / f).is_file()]
    backends = {p.name for p in (ROOT / "tests" / "backends").iterdir() if p.is_dir() and p.name != "__pycache__"}
    covered = {pathlib.Path(f).parts[2] for f in files if f.startswith("tests/backends/") and f.count("/") == 3}
    assert backends <= covered, f"no --subset file for tests/backends/{sorted(backends - covered)}"
    for area in ("distributed", "integrations", "cli"):
        assert any(f.startswith(f"tests/{area}/") for f in files), area
    for name in ("test_torch_version.py", "test_linear_api.py", "test_same_at_every_size.py",
                 "test_autograd.py", "test_compile.py"):
        assert f"tests/{name}" in files, name
