"""CSV files as spreadsheets write them: semicolons with decimal commas, tabs, byte-order marks;
every one trains to the same model as the plain comma-separated file, and --sep forces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import TOY_HEADER, run, toy_rows

from crossent.cli._csv import sniff


def _text(sep: str, decimal: str = ".") -> str:
    lines = [sep.join(TOY_HEADER)]
    for row in toy_rows():
        cells = [f"{v}".replace(".", decimal) if isinstance(v, float) else v for v in row]
        lines.append(sep.join(cells))
    return "\n".join(lines) + "\n"


FORMATS = {
    "semicolon, decimal comma": (_text(";", ","), "utf-8"),
    "tab": (_text("\t"), "utf-8"),
    "pipe": (_text("|"), "utf-8"),
    "UTF-8 BOM": (_text(","), "utf-8-sig"),
    "UTF-16 BOM, tab (Excel's Unicode text)": (_text("\t"), "utf-16"),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("csv")
    path = tmp / "plain.csv"
    path.write_text(_text(","), encoding="utf-8")
    out = tmp / "m"
    run("train", "--data", path, "--target", "animal", "--out", out, "--epochs", "2", "-q")
    return path, json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_trains_the_same_model(tmp_path, reference, name):
    text, encoding = FORMATS[name]
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode(encoding))
    out = tmp_path / "m"
    run("train", "--data", path, "--target", "animal", "--out", out, "--epochs", "2", "-q")
    cfg = json.loads((out / "config.json").read_text())
    ref = reference[1]
    assert cfg["features"] == ref["features"] == ["height", "weight"]
    assert cfg["preprocessing"]["columns"] == ref["preprocessing"]["columns"]
    assert cfg["history"] == ref["history"]  # same numbers, same split, same training
    # and the model reads its own format back
    res = run("evaluate", "--model", out, "--data", path, "--split", "all", "--out", tmp_path / "e")
    assert "rows (60)" in res.stdout


def test_data_says_what_it_sniffed(tmp_path):
    path = tmp_path / "eu.csv"
    path.write_bytes(_text(";", ",").encode("utf-8-sig"))
    first = run("data", path).stdout.splitlines()[0]
    assert first.endswith(
        "60 rows, 3 columns (delimiter semicolon (sniffed), decimal comma, UTF-8 with BOM)"
    )


def test_sep_forces_the_delimiter(tmp_path):
    path = tmp_path / "odd.csv"
    # both split every row evenly; sniffing prefers more columns (';'), the author meant ','
    path.write_text("a;b;c,y\n1;2;3,p\n3;4;5,q\n", encoding="utf-8")
    sniffed = run("data", path).stdout.splitlines()[0]
    assert sniffed.endswith("3 columns (delimiter semicolon (sniffed), UTF-8)")
    forced = run("data", path, "--sep", "comma").stdout.splitlines()[0]
    assert forced.endswith("2 columns (delimiter comma (--sep), UTF-8)")
    res = run("data", path, "--sep", "ab", expect=2)
    assert res.stderr.startswith("Error: --sep 'ab' is not a single delimiter character")


@pytest.mark.parametrize(
    "text, sep",
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b\n1,5;2,5\n3,5;4\n", ";"),  # decimal commas: ',' splits rows unevenly
        ('name,comment\nx,"semi; colons; inside"\ny,"more; here"\n', ","),
        ("a\tb\n1\t2\n", "\t"),
        ("single\n1\n2\n", ","),  # one column: the default
    ],
)
def test_sniff(text, sep):
    assert sniff(text) == sep


def test_not_utf8_is_one_sentence(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("name,y\ncaf\xe9,a\nth\xe9,b\n".encode("latin-1"))
    res = run("data", path, expect=2)
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1
    assert "is not UTF-8 text (byte 0xe9" in res.stderr
