"""Every causal-LM class of the installed transformers, patched: the unpatched model's loss and
every gradient, or a refusal at ``patch`` -- never an error at the first step, never another
number (``hf_sweep``). The README's tested table and refused list are the sweep's, for the
transformers version the lock installs.

The full sweep (191 classes of transformers 5.25: 90 s on one thread, most of it building the
models) runs with ``CROSSENT_HF_SWEEP=full``. By default a reduced sweep runs (~1/4 of that):
every class the README names as refused or not built, and every ``STRIDE``-th of the others; the
README's counts are checked by the full sweep only."""

from __future__ import annotations

import collections
import os
import pathlib
import re

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("crossent.integrations.transformers")

import hf_sweep  # noqa: E402
import hf_zoo  # noqa: E402

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
FULL = os.environ.get("CROSSENT_HF_SWEEP", "") == "full"
STRIDE = 5  # the reduced sweep's sample of the classes the README does not name


def _summary(results) -> str:
    counts = collections.Counter(r.outcome for r in results)
    lines = [f"transformers {transformers.__version__}, {'full' if FULL else 'reduced'} sweep: "
             f"{len(results)} classes, {counts['supported']} supported, {counts['refused']} refused, "
             f"{counts['not built']} not built, {counts['wrong']} wrong "
             f"({sum(r.seconds for r in results):.0f} s)"]
    lines += [f"  {r.outcome}: {r.name}: {r.reason}" for r in results if r.outcome != "supported"]
    return "\n".join(lines)


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


def _selection() -> tuple[str, ...] | None:
    """None (every class) for the full sweep; else the README's named classes and a sample."""
    if FULL:
        return None
    _, _, refused, not_built = _readme_sweep()
    named = refused | not_built
    others = [n for n in hf_zoo.classes() if n not in named]
    return tuple(sorted(named & set(hf_zoo.classes()))) + tuple(others[::STRIDE])


def _results():
    return hf_sweep.sweep(_selection())


def test_every_causal_lm_class_is_patched_exactly_or_refused_at_patch():
    results = _results()
    print(_summary(results))
    wrong = [f"{r.name}: {r.reason}" for r in results if r.outcome == "wrong"]
    assert not wrong, "\n".join(wrong)
    counts = collections.Counter(r.outcome for r in results)
    # the sweep builds and runs the classes (a broken tiny config shows as "not built")
    assert counts["supported"] >= 2 * (counts["refused"] + counts["not built"]), _summary(results)


def test_the_readme_lists_the_sweeps_refused_and_unbuilt_classes():
    from lockfile import locked_versions

    version, _, refused, not_built = _readme_sweep()
    assert version == locked_versions().get("transformers"), "the sweep row names the locked version"
    if transformers.__version__ != version:
        pytest.skip(f"the README's sweep is of transformers {version}, this is {transformers.__version__}")
    results = _results()
    assert refused == {r.name for r in results if r.outcome == "refused"}, _summary(results)
    assert not_built == {r.name for r in results if r.outcome == "not built"}, _summary(results)


@pytest.mark.skipif(not FULL, reason="the README's counts need the full sweep: CROSSENT_HF_SWEEP=full")
def test_the_readme_lists_the_sweeps_counts():
    version, counts, _, _ = _readme_sweep()
    if transformers.__version__ != version:
        pytest.skip(f"the README's sweep is of transformers {version}, this is {transformers.__version__}")
    results = _results()
    assert len(results) == len(hf_zoo.classes())
    got = collections.Counter(r.outcome for r in results)
    assert counts == {k: got[k] for k in ("supported", "refused", "not built")}, _summary(results)
