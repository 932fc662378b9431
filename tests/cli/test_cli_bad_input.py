"""Every bad input: one sentence naming the problem and the fix, exit code 2, no traceback, and
nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import TOY_HEADER, run, toy_rows, trained, write_csv


def toy(tmp: Path, rows=None, header=TOY_HEADER) -> Path:
    return write_csv(tmp / "data.csv", header, rows if rows is not None else toy_rows())


def copy_model(tmp: Path, name: str = "toy") -> Path:
    dst = tmp / "model"
    shutil.copytree(trained(name), dst)
    shutil.rmtree(dst / "evaluation", ignore_errors=True)
    return dst


def all_missing(tmp: Path) -> list[str]:
    rows = [[r[0], "", r[2]] for r in toy_rows()]
    return ["train", "--data", toy(tmp, rows), "--target", "animal"]


def non_numeric(tmp: Path) -> list[str]:
    rows = toy_rows()
    rows[6][0] = "tall"
    return ["train", "--data", toy(tmp, rows), "--target", "animal", "--numeric", "height"]


def with_nan_for_an_old_model(tmp: Path) -> list[str]:
    """A model folder from before `preprocessing` (no imputation) still refuses missing values."""
    model = copy_model(tmp)
    cfg = json.loads((model / "config.json").read_text())
    del cfg["preprocessing"]
    (model / "config.json").write_text(json.dumps(cfg))
    rows = toy_rows()
    rows[4][1] = ""
    rows[9][1] = ""
    return ["predict", "--model", model, "--data", toy(tmp, rows)]


def single_class(tmp: Path) -> list[str]:
    rows = [[r[0], r[1], "cat"] for r in toy_rows()]
    return ["train", "--data", toy(tmp, rows), "--target", "animal"]


def nan_label(tmp: Path) -> list[str]:
    rows = toy_rows()
    rows[2][2] = ""
    return ["train", "--data", toy(tmp, rows), "--target", "animal"]


def unseen_label(tmp: Path) -> list[str]:
    rows = toy_rows(9) + [[0.5, 0.5, "fox"]]
    return ["evaluate", "--model", copy_model(tmp), "--data", toy(tmp, rows)]


def other_version(tmp: Path) -> list[str]:
    model = copy_model(tmp)
    cfg = json.loads((model / "config.json").read_text())
    cfg["format_version"] = 99
    (model / "config.json").write_text(json.dumps(cfg))
    return ["predict", "--model", model, "--data", toy(tmp)]


def corrupt_weights(tmp: Path) -> list[str]:
    model = copy_model(tmp)
    blob = bytearray((model / "model.safetensors").read_bytes())
    blob[-5:] = b"\x00\x01\x02\x03\x04"
    (model / "model.safetensors").write_bytes(bytes(blob))
    return ["predict", "--model", model, "--data", toy(tmp)]


def truncated_weights_with_matching_hash(tmp: Path) -> list[str]:
    import hashlib

    model = copy_model(tmp)
    blob = (model / "model.safetensors").read_bytes()[:40]
    (model / "model.safetensors").write_bytes(blob)
    cfg = json.loads((model / "config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (model / "config.json").write_text(json.dumps(cfg))
    return ["predict", "--model", model, "--data", toy(tmp)]


def pickle_folder(tmp: Path) -> list[str]:
    folder = tmp / "pickled"
    folder.mkdir()
    torch.save(torch.nn.Linear(2, 3).state_dict(), folder / "simple_nn.pth")
    return ["predict", "--model", folder, "--data", toy(tmp)]


def pickle_file(tmp: Path) -> list[str]:
    torch.save(torch.nn.Linear(2, 3).state_dict(), tmp / "simple_nn.pth")
    return ["evaluate", "--model", tmp / "simple_nn.pth", "--data", toy(tmp)]


def pickle_named_safetensors(tmp: Path) -> list[str]:
    model = copy_model(tmp)
    torch.save(torch.nn.Linear(2, 3).state_dict(), model / "model.safetensors")
    return ["predict", "--model", model, "--data", toy(tmp)]


def corrupt_checkpoint(tmp: Path) -> list[str]:
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"
    )
    return ["train", "--data", "iris", "--out", out, "--resume"]


def pickle_checkpoint(tmp: Path) -> list[str]:
    out = tmp / "run"
    out.mkdir()
    torch.save({"epoch": 3}, out / "checkpoint.safetensors")
    return ["train", "--data", "iris", "--out", out, "--resume"]


def _date_model(tmp: Path) -> Path:
    rows = [[f"2021-01-{1 + i % 28:02d}", i * 0.5, "ab"[i % 2]] for i in range(30)]
    path = write_csv(tmp / "dates.csv", ["day", "x", "y"], rows)
    run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp / "dm", "-q")
    return tmp / "dm"


def missing_feature(tmp: Path) -> list[str]:
    rows = [[r[0], r[2]] for r in toy_rows()]
    return ["predict", "--model", copy_model(tmp), "--data", toy(tmp, rows, ["height", "animal"])]


def empty_csv(tmp: Path) -> list[str]:
    (tmp / "empty.csv").write_text("")
    return ["train", "--data", tmp / "empty.csv", "--target", "animal"]


def header_only(tmp: Path) -> list[str]:
    (tmp / "h.csv").write_text("a,b,animal\n")
    return ["train", "--data", tmp / "h.csv", "--target", "animal"]


def too_many_categories(tmp: Path) -> list[str]:
    """A free-text column: its 4 commonest values cover a few rows, the rest would be 'other'."""
    rows = [[f"note {i % 50}", r[0], r[2]] for i, r in enumerate(toy_rows())]
    path = toy(tmp, rows, ["comment", "height", "animal"])
    return ["train", "--data", path, "--target", "animal", "--max-categories", "5"]


def leaking_copy(tmp: Path) -> list[str]:
    rows = [[r[0], r[2].upper(), r[2]] for r in toy_rows()]
    return [
        "train",
        "--data",
        toy(tmp, rows, ["height", "animal_code", "animal"]),
        "--target",
        "animal",
    ]


CASES: list[tuple[str, Callable[[Path], list], str]] = [
    (
        "category cap exceeded",
        too_many_categories,
        "column 'comment' .* has \\d+ categories and the 4 most frequent cover only 1\\d% of the "
        "training rows, .* --drop comment, or raise --max-categories \\(now 5\\)",
    ),
    (
        "--drop of the target",
        lambda t: ["train", "--data", toy(t), "--target", "animal", "--drop", "animal"],
        "--drop names the target 'animal', which train needs",
    ),
    (
        "--drop of a missing column",
        lambda t: ["train", "--data", toy(t), "--target", "animal", "--drop", "colour"],
        "--drop names 'colour', which .* lacks; its columns: 'height', 'weight', 'animal'",
    ),
    (
        "--categorical and --numeric",
        lambda t: [
            "train",
            "--data",
            toy(t),
            "--target",
            "animal",
            "--categorical",
            "height",
            "--numeric",
            "height",
        ],  # fmt: skip
        "column 'height' is named by both --categorical and --numeric; pick one",
    ),
    (
        "--categorical of the target",
        lambda t: ["train", "--data", toy(t), "--target", "animal", "--categorical", "animal"],
        "--categorical names the target 'animal', which is the label, not a feature",
    ),
    ("feature copies the target", leaking_copy, "one-to-one relabelling of the target 'animal'"),
    (
        "date not like training",
        lambda t: [
            "predict",
            "--model",
            _date_model(t),
            "--data",
            write_csv(t / "new.csv", ["day", "x"], [["2021-13-45", 1.0]]),
        ],  # fmt: skip
        "column 'day' of .* has a value that is not a date like the training data's",
    ),
    (
        "missing file",
        lambda t: ["train", "--data", t / "nope.csv", "--target", "y"],
        "no such file",
    ),
    (
        "missing column",
        lambda t: ["train", "--data", toy(t), "--target", "species"],
        "has no column 'species'",
    ),
    ("no --target for a CSV", lambda t: ["train", "--data", toy(t)], "--target COLUMN"),
    (
        "non-numeric feature",
        non_numeric,
        "column 'height' of .* is not numeric \\('tall' in data row 7\\)",
    ),
    (
        "NaN feature, model without imputation",
        with_nan_for_an_old_model,
        "column 'weight' .* 2 missing value\\(s\\) \\(data rows 5, 10\\)",
    ),
    ("all values missing", all_missing, "column 'weight' .* has no values .* --drop weight"),
    ("NaN label", nan_label, "target column 'animal' .* 1 missing label"),
    ("single class", single_class, "holds a single class \\('cat'\\)"),
    ("unseen label", unseen_label, "label\\(s\\) 'fox' that the model was not trained on"),
    ("other format version", other_version, "format version 99 .* retrain"),
    ("corrupt weights", corrupt_weights, "does not match its config.json"),
    ("truncated weights", truncated_weights_with_matching_hash, "model file .* is corrupt"),
    ("pickle in folder", pickle_folder, "pickle file .* never opens it"),
    ("pickle file", pickle_file, "pickle file .* never opens it"),
    ("pickle named .safetensors", pickle_named_safetensors, "pickle file .* never opens it"),
    ("corrupt checkpoint", corrupt_checkpoint, "checkpoint .* corrupt"),
    ("pickle checkpoint", pickle_checkpoint, "pickle file .* never opens it"),
    ("missing feature column", missing_feature, "lacks the feature column\\(s\\) 'weight'"),
    ("empty CSV", empty_csv, "is empty"),
    ("header only", header_only, "no data rows"),
    (
        "missing model",
        lambda t: ["predict", "--model", t / "nope", "--data", "iris"],
        "model folder .* does not exist",
    ),
    (
        "not a model folder",
        lambda t: ["predict", "--model", t, "--data", "iris"],
        "not a crossent model folder",
    ),
    (
        "binary with 3 classes",
        lambda t: ["train", "--data", "iris", "--task", "binary"],
        "--task binary needs two classes",
    ),
    (
        "class weights count",
        lambda t: ["train", "--data", "iris", "--class-weight", "1,2"],
        "gives 2 weights for 3 classes",
    ),
    (
        "class weight name",
        lambda t: ["train", "--data", "iris", "--class-weight", "rose=2"],
        "'rose', which is not a class",
    ),
    ("bad hidden", lambda t: ["train", "--data", "iris", "--hidden", "64,x"], "--hidden"),
    (
        "target on builtin",
        lambda t: ["train", "--data", "iris", "--target", "species"],
        "leave out --target",
    ),
    (
        "split val on other data",
        lambda t: [
            "evaluate",
            "--model",
            copy_model(t),
            "--data",
            write_csv(t / "o.csv", TOY_HEADER, toy_rows(12)),
            "--split",
            "val",
        ],
        "needs the data the model was trained on",
    ),
    ("bench without scripts", lambda t: ["bench", "--dir", t], "holds no bench_\\*.py"),
]


@pytest.mark.parametrize("name, make_args, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_sentence_exit_2_nothing_written(
    tmp_path, monkeypatch, name, make_args, pattern
):
    import re

    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) would land here
    args = make_args(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = run(*args, expect=2)
    err = result.stderr
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, f"files written or changed: {set(after) ^ set(before)}"


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossent",
            "train",
            "--data",
            str(tmp_path / "x.csv"),
            "--target",
            "y",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: no such file") and "Traceback" not in proc.stderr
    assert proc.stdout == ""
