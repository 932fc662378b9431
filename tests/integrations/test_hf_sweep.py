"""Every causal-LM class of the installed transformers, patched: the unpatched model's loss and
every gradient, or a refusal at ``patch`` -- never an error at the first step, never another
number (``hf_sweep``). The README's tested table and refused list are the sweep's, for the
transformers version the lock installs."""

from __future__ import annotations

import collections
import pathlib
import re

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("crossent.integrations.transformers")

import hf_sweep  # noqa: E402

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _summary(results) -> str:
    counts = collections.Counter(r.outcome for r in results)
    lines = [f"transformers {transformers.__version__}: {len(results)} classes, "
             f"{counts['supported']} supported, {counts['refused']} refused, "
             f"{counts['not built']} not built, {counts['wrong']} wrong "
             f"({sum(r.seconds for r in results):.0f} s)"]
    lines += [f"  {r.outcome}: {r.name}: {r.reason}" for r in results if r.outcome != "supported"]
    return "\n".join(lines)


def test_every_causal_lm_class_is_patched_exactly_or_refused_at_patch():
    results = hf_sweep.sweep()
    print(_summary(results))
    wrong = [f"{r.name}: {r.reason}" for r in results if r.outcome == "wrong"]
    assert not wrong, "\n".join(wrong)
    counts = collections.Counter(r.outcome for r in results)
    # the sweep builds and runs the classes (a broken tiny config shows as "not built")
    assert counts["supported"] >= 4 * (counts["refused"] + counts["not built"]), _summary(results)


def _readme_sweep():
    """(version, counts, refused names, not-built names) from the README."""
    text = README.read_text()
    table = text[text.index("<!-- tested:begin -->"):text.index("<!-- tested:end -->")]
    (row,) = [line for line in table.splitlines() if "(sweep)" in line]
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (supported|refused|not built)", cells[3]))
    block = text[text.index("<!-- refused:begin -->"):text.index("<!-- refused:end -->")]
    refused, not_built = set(), set()
    for line in block.splitlines():  # the class names transformers has, among the `code` spans
        names = {n for n in re.findall(r"`(\w+)`", line) if hasattr(transformers, n)}
        if line.startswith("- "):
            refused.update(names)
        elif line.startswith("Not built"):
            not_built.update(names)
    return cells[1], counts, refused, not_built


def test_the_readme_lists_the_sweeps_counts_and_refused_classes():
    from lockfile import locked_versions

    version, counts, refused, not_built = _readme_sweep()
    assert version == locked_versions().get("transformers"), "the sweep row names the locked version"
    if transformers.__version__ != version:
        pytest.skip(f"the README's sweep is of transformers {version}, this is {transformers.__version__}")
    results = hf_sweep.sweep()
    got = collections.Counter(r.outcome for r in results)
    assert counts == {k: got[k] for k in ("supported", "refused", "not built")}, _summary(results)
    assert refused == {r.name for r in results if r.outcome == "refused"}, _summary(results)
    assert not_built == {r.name for r in results if r.outcome == "not built"}, _summary(results)
