"""The files people have: compressed CSV (by magic bytes, whatever the name), TSV, Parquet, Excel,
JSON Lines and JSON, and a pandas DataFrame through the Python API, all read as the same table;
anything else refused with one sentence that says what crossent reads and what the file is."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sqlite3
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import TOY_HEADER, run, toy_rows

from crossent.cli import api
from crossent.cli import data as data_mod
from crossent.cli.readers import read_table


def toy_frame() -> pd.DataFrame:
    return pd.DataFrame(toy_rows(), columns=TOY_HEADER)


def _csv_bytes() -> bytes:
    return toy_frame().to_csv(index=False).encode()


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)


WRITERS = {
    "data.csv.gz": lambda p: p.write_bytes(gzip.compress(_csv_bytes())),
    "data.csv.bz2": lambda p: p.write_bytes(bz2.compress(_csv_bytes())),
    "data.csv.xz": lambda p: p.write_bytes(lzma.compress(_csv_bytes())),
    "data.zip": lambda p: _zip(p, {"inner.csv": _csv_bytes()}),
    "gzip_named.csv": lambda p: p.write_bytes(gzip.compress(_csv_bytes())),  # magic bytes win
    "data.tsv": lambda p: toy_frame().to_csv(p, sep="\t", index=False),
    "data.parquet": lambda p: toy_frame().to_parquet(p),
    "data.xlsx": lambda p: toy_frame().to_excel(p, index=False),
    "data.jsonl": lambda p: toy_frame().to_json(p, orient="records", lines=True),
    "data.jsonl.gz": lambda p: p.write_bytes(
        gzip.compress(toy_frame().to_json(orient="records", lines=True).encode())
    ),
    "one_line.json": lambda p: toy_frame().to_json(p, orient="records"),  # a one-line array
}
KINDS = {
    "data.csv.gz": "comma (sniffed), UTF-8, gzip-compressed",
    "data.csv.bz2": "bz2-compressed",
    "data.csv.xz": "xz-compressed",
    "data.zip": "zip-compressed",
    "gzip_named.csv": "gzip-compressed",
    "data.tsv": "delimiter tab (sniffed)",
    "data.parquet": "(Parquet)",
    "data.xlsx": "(Excel)",
    "data.jsonl": "(JSON Lines)",
    "data.jsonl.gz": "(JSON Lines, gzip-compressed)",
    "one_line.json": "(JSON)",
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_reads_the_same_table(tmp_path, name):
    path = tmp_path / name
    WRITERS[name](path)
    frame, _ = read_table(path)
    pd.testing.assert_frame_equal(frame, toy_frame(), check_dtype=False)
    table = data_mod.load_for_training(str(path), "animal")
    assert table.plan.kinds == {"height": "numeric", "weight": "numeric"}
    first = run("data", path).stdout.splitlines()[0]
    assert ": 60 rows, 3 columns (" in first and KINDS[name] in first, first


@pytest.mark.parametrize("name", ["data.xlsx", "data.parquet", "data.csv.gz"])
def test_formats_train_and_predict_like_the_csv(tmp_path, name):
    plain = tmp_path / "plain.csv"
    toy_frame().to_csv(plain, index=False)
    path = tmp_path / name
    WRITERS[name](path)
    for src, out in ((plain, "a"), (path, "b")):
        run(
            "train",
            "--data",
            src,
            "--target",
            "animal",
            "--epochs",
            "2",
            "--out",
            tmp_path / out,
            "-q",
        )
    a, b = (json.loads((tmp_path / o / "config.json").read_text()) for o in "ab")
    assert a["preprocessing"]["columns"] == b["preprocessing"]["columns"]
    assert a["history"] == b["history"]
    assert run("predict", "--model", tmp_path / "a", "--data", path).stdout == (
        run("predict", "--model", tmp_path / "a", "--data", plain).stdout
    )


def test_excel_dates_and_other_sheets(tmp_path):
    days = pd.date_range("2021-01-04", periods=40, freq="D")
    frame = pd.DataFrame({"day": days, "x": range(40), "y": ["ab"[i % 2] for i in range(40)]})
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as w:
        frame.to_excel(w, sheet_name="Data", index=False)
        pd.DataFrame({"note": ["read me"]}).to_excel(w, sheet_name="Notes", index=False)
    res = run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "m")
    assert "note: read the first sheet 'Data' of 2 (not 'Notes')" in res.stderr
    assert "date column 'day' expanded into day_year, day_month, day_dayofweek" in res.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["preprocessing"]["outputs"][:3] == ["day_year", "day_month", "day_dayofweek"]
    # the model reads the same rows from a CSV, where the dates are text
    csv = tmp_path / "book.csv"
    frame.to_csv(csv, index=False)
    from_csv = run("predict", "--model", tmp_path / "m", "--data", csv).stdout
    assert from_csv == run("predict", "--model", tmp_path / "m", "--data", path).stdout


def _sqlite(p: Path) -> None:
    with sqlite3.connect(p) as db:
        db.execute("create table t (a)")


UNSUPPORTED = {
    "report.pdf": (lambda p: p.write_bytes(b"%PDF-1.7\n..."), "a PDF document"),
    "chart.png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n...."), "a PNG image"),
    "old.xls": (
        lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 40),
        "an old Excel .xls",
    ),
    "db.sqlite": (_sqlite, "an SQLite database"),
    "blob.bin": (lambda p: p.write_bytes(bytes(range(256))), "binary data"),
    "two.zip": (lambda p: _zip(p, {"a.csv": b"a\n1\n", "b.csv": b"b\n2\n"}), "a zip archive of 2"),
    "model.npy": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00"), "a NumPy array"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_files_say_what_crossent_reads(tmp_path, name):
    make, what = UNSUPPORTED[name]
    make(tmp_path / name)
    res = run("train", "--data", tmp_path / name, "--target", "y", expect=2)
    assert res.stderr.startswith(
        "Error: crossent reads CSV, TSV, Parquet, Excel and JSON Lines; "
    ), res.stderr
    assert f"looks like {what}" in res.stderr and res.stderr.count("\n") == 1


def test_latin1_text_still_gets_the_encoding_sentence(tmp_path):
    path = tmp_path / "latin1.csv.gz"
    path.write_bytes(gzip.compress("name,y\ncaf\xe9,a\n".encode("latin-1")))
    res = run("data", path, expect=2)
    assert "is not UTF-8 text (byte 0xe9" in res.stderr


def test_dataframe_through_the_python_api(tmp_path):
    frame = toy_frame()
    before = frame.copy()
    result = api.train(frame, "animal", out=tmp_path / "m", epochs=3, lr=0.02)
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not changed
    assert len(result.history) == 3 and (tmp_path / "m" / "model.safetensors").exists()
    # every row in both: a float32 product's rounding may depend on its row count (MKL picks its
    # kernel by shape), so the same rows go through the same shapes here
    table = api.predict(tmp_path / "m", frame.drop(columns=["animal"]))
    assert list(table.columns) == ["predicted", "prob_cat", "prob_dog", "prob_eel"]
    csv = tmp_path / "toy.csv"
    frame.to_csv(csv, index=False)
    from_csv = run("predict", "--model", tmp_path / "m", "--data", csv).stdout
    assert from_csv.splitlines()[1:] == table.to_csv(index=False).splitlines()[1:]
    metrics = api.evaluate(tmp_path / "m", frame)
    assert 0 <= metrics["accuracy"] <= 1 and metrics["rows"] == 60
