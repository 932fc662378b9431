"""The README's table of what the integration tests exercise stays true: every library version the
lock installs (constraints.txt) is listed for it, the oldest TRL listed is the oldest crossent accepts, and the
model families listed are the ones the tests build."""

from __future__ import annotations

import pathlib
import re

import pytest

pytest.importorskip("transformers")

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"

# test name of a family -> its name in the README
DISPLAY = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3",
           "gemma2": "Gemma 2", "gpt2": "GPT-2", "phi3": "Phi-3", "mixtral": "Mixtral",
           "cohere": "Cohere", "granite": "Granite", "llava": "LLaVA", "paligemma": "PaliGemma",
           "gemma3": "Gemma 3", "qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL",
           "mllama": "Mllama"}


def _rows():
    text = README.read_text()
    body = text[text.index("<!-- tested:begin -->"):text.index("<!-- tested:end -->")]
    rows = []
    for line in body.splitlines()[3:]:  # marker, header, rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4:
            library, versions, entry, families = cells
            rows.append(dict(library=library, versions=[v.strip() for v in versions.split(",")],
                             entry=entry, families={f.strip() for f in families.split(",")}))
    return rows


def test_the_table_lists_the_locked_versions():
    """Each library's version in the lock (constraints.txt: what `make test` installs, for this
    Python) is listed in its rows: the suite that passes is the one the table describes."""
    from lockfile import locked_versions

    rows = _rows()
    assert {r["library"] for r in rows} == {"transformers", "trl", "peft", "accelerate"}
    pins = locked_versions()
    for row in rows:
        version = pins.get(row["library"])
        if version is None:
            continue  # not locked for this Python (TRL needs 3.11): its tests skip here
        assert version in row["versions"], (
            f"constraints.txt locks {row['library']} {version}: run the suite on it and add it to the "
            f"README's table ({row})")


def test_the_oldest_trl_listed_is_the_oldest_accepted():
    from crossent.integrations.transformers import _trl

    (row,) = [r for r in _rows() if r["library"] == "trl"]
    oldest = min(tuple(int(p) for p in v.split(".")) for v in row["versions"])
    assert oldest[:2] == _trl.MIN_VERSION
    assert set(row["versions"]) == set(_trl.TESTED)  # (named by the refusal of an older TRL)
    assert set(_trl.TRAINERS) <= set(re.findall(r"\w+Trainer", row["entry"]))


def test_the_families_listed_are_the_ones_tested():
    import test_hf_transformers
    import vlm_helpers

    causal, vlm, sweep = [r for r in _rows() if r["library"] == "transformers"]
    assert causal["families"] == {DISPLAY[m] for m in test_hf_transformers.MODELS}
    assert vlm["families"] == {DISPLAY[m] for m in vlm_helpers.FAMILIES}
    assert "(sweep)" in sweep["entry"]  # its counts: test_hf_sweep.py
    for row in _rows():
        if row["library"] != "transformers":
            assert row["families"] <= set(DISPLAY.values()), row
