"""Numbers written for people ('197,608', '$1,234.50', '12.5%', '1.234,5'): read as numbers per
column with a notice, saved with the model so predict reads new rows the same way, and
--numeric forces it with an error that does not lead back to a refusal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run, write_csv

from crossent.cli import columns, numbers


@pytest.mark.parametrize(
    "values, decimal, thousands, expected",
    [
        (["197,608", "1,234.5", "999", "12"], ".", ",", [197608, 1234.5, 999, 12]),
        (["$1,200", "-$3.50", "$ 7", "€2,000.25"], ".", ",", [1200, -3.5, 7, 2000.25]),
        (["12.5%", "50 %", "-1%"], ".", ",", [0.125, 0.5, -0.01]),
        (["1.234,5", "2,5", "€ 3.000"], ",", ".", [1234.5, 2.5, 3000]),
        (["1 234 567", "12 000", "5"], ".", " ", [1234567, 12000, 5]),
        (["1'000", "25'300.5"], ".", "'", [1000, 25300.5]),
        (["1,2", "3,45"], ".", ".", [1.2, 3.45]),  # decimal commas in one column of a '.' file
    ],
)
def test_one_format_per_column(values, decimal, thousands, expected):
    fmt, read = numbers.read(pd.Series(values), decimal)
    assert fmt is not None and fmt.thousands == thousands
    np.testing.assert_allclose(read.to_numpy(), expected)


@pytest.mark.parametrize(
    "values",
    [
        ["1,23,4", "5"],  # neither groups of three nor one decimal comma
        ["1,234", "1 234"],  # two separators in one column
        ["12 apples", "3 pears"],
        ["1,234.5.6"],
    ],
)
def test_not_numbers(values):
    _, read = numbers.read(pd.Series(values), ".")
    assert read.isna().any()


def test_plain_numbers_need_no_format():
    fmt, read = numbers.read(pd.Series(["1.5", "-2", "3e3"]), ".")
    assert fmt is None and read.tolist() == [1.5, -2.0, 3000.0]


def _visitors(n: int = 60) -> list[list[object]]:
    """Many distinct counts written with thousands separators (the issue's 'visitors')."""
    return [
        [
            f"{150_000 + i * 977:,}",
            f"${i * 12.5:,.2f}",
            f"{i % 7 * 3.5}%",
            "ab"[i % 2 == 0 or i % 5 == 0],
        ]
        for i in range(n)
    ]


def test_train_reads_them_as_numbers_with_a_notice(tmp_path):
    path = write_csv(tmp_path / "web.csv", ["visitors", "revenue", "share", "y"], _visitors())
    out = tmp_path / "m"
    res = run("train", "--data", path, "--target", "y", "--epochs", "2", "--out", out)
    assert (
        "note: column 'visitors' read as numbers written with thousands separators (','), "
        "decimal mark '.', currency and percent signs (e.g. '150,000' = 150000)" in res.stderr
    )
    assert "'$12.50' = 12.5" in res.stderr and "'3.5%' = 0.035" in res.stderr
    cfg = json.loads((out / "config.json").read_text())
    cols = {c["name"]: c for c in cfg["preprocessing"]["columns"]}
    assert [cols[c]["kind"] for c in ("visitors", "revenue", "share")] == ["numeric"] * 3
    assert cols["visitors"]["text_numbers"] == {"thousands": ",", "decimal": "."}
    assert cfg["format_version"] == 2 and "scaling" not in cfg  # a v1 reader would misread it
    # the fitted numbers are those of the values as written: 150,000 ... 207,643
    assert 150_000 <= cols["visitors"]["median"] <= 150_000 + 59 * 977
    assert cols["revenue"]["median"] <= 59 * 12.5 and cols["share"]["median"] <= 0.21
    # predict reads new rows written the same way, and says nothing about them
    new = write_csv(
        tmp_path / "new.csv", ["visitors", "revenue", "share"], [["1,000", "$5", "10%"]]
    )
    res = run("predict", "--model", out, "--data", new)
    assert res.stderr == "" and res.stdout.startswith("predicted,")


def test_the_issue_column_is_no_longer_a_refused_categorical(tmp_path):
    rows = [[f"{197_608 + i * 1_311:,}", "ab"[i % 2]] for i in range(80)]
    path = write_csv(tmp_path / "t.csv", ["visitors", "y"], rows)
    res = run("data", path, "--target", "y")
    assert "visitors" in res.stdout and "feature (numbers with separators or signs)" in res.stdout
    run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "m", "-q")
    run("train", "--data", path, "--target", "y", "--epochs", "1", "--numeric", "visitors",
        "--out", tmp_path / "n", "-q")  # fmt: skip


def test_numeric_forced_on_words_says_what_was_tried(tmp_path):
    rows = [[f"{1_000 + i:,}" if i != 7 else "lots", "ab"[i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "t.csv", ["visitors", "y"], rows)
    res = run("train", "--data", path, "--target", "y", "--numeric", "visitors", expect=2)
    assert (
        "column 'visitors' of " in res.stderr
        and "is not numeric ('lots' in data row 8) even with thousands separators, currency and "
        "percent signs allowed; fix those values, or leave it out with --drop visitors"
        in res.stderr
    )
    assert "--numeric" not in res.stderr.split("allowed;")[1]  # no advice back to the refusal
    # without --numeric, one word among numbers is a missing-value marker, said in a note
    res = run("train", "--data", path, "--target", "y", "--epochs", "1", "--out", tmp_path / "m")
    assert "note: column 'visitors': 'lots' read as missing values" in res.stderr


def test_semicolon_file_with_decimal_commas_and_thousands_points(tmp_path):
    # 1.037,1 = one thousand and thirty-seven point one
    rows = [
        f"{(1000 + i * 37):,}".replace(",", ".") + f",{i % 10};{'ab'[i % 2]}" for i in range(40)
    ]
    (tmp_path / "eu.csv").write_text("\n".join(["amount;y", *rows]) + "\n", encoding="utf-8")
    plan_frame = pd.read_csv(tmp_path / "eu.csv", sep=";", decimal=",")
    reading = columns.numeric_reading(plan_frame["amount"], decimal=",")
    assert reading is not None and reading.fmt == numbers.TextNumbers(".", ",")
    assert reading.values.iloc[1] == pytest.approx(1037.1)
    res = run("train", "--data", tmp_path / "eu.csv", "--target", "y", "--epochs", "1",
              "--out", tmp_path / "m")  # fmt: skip
    assert "thousands separators ('.'), decimal mark ','" in res.stderr
