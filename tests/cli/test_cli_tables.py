"""Real tables: Palmer penguins end to end (categoricals, missing values, an id column, a category
unseen in training), compared with scikit-learn's LogisticRegression on the same split; the
preprocessing saved as JSON equals scikit-learn's fitted transformers; ids, leaks and dates."""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import run, write_csv

from crossent.cli import columns, preprocess
from crossent.cli import data as data_mod

pytest.importorskip("palmerpenguins")
PENGUINS = Path(str(resources.files("palmerpenguins") / "data" / "penguins.csv"))


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> dict[str, Path]:
    """penguins.csv with a row id in front (the file is sorted by species, so the id alone would
    predict it), trained once for the module."""
    tmp = tmp_path_factory.mktemp("penguins")
    frame = pd.read_csv(PENGUINS)
    frame.insert(0, "rowid", np.arange(1, len(frame) + 1))
    csv = tmp / "penguins.csv"
    frame.to_csv(csv, index=False)
    out = tmp / "model"
    res = run("train", "--data", csv, "--target", "species", "--out", out, "-q")
    return {"csv": csv, "model": out, "tmp": tmp, "stderr": res.stderr}


def test_penguins_train_drops_the_id_and_saves_json_preprocessing(penguins):
    assert (
        "note: column 'rowid' left out: it is unique per row (an identifier); "
        "--keep rowid uses it as a feature" in penguins["stderr"]
    )
    cfg = json.loads((penguins["model"] / "config.json").read_text())
    assert cfg["format_version"] == 2 and "scaling" not in cfg
    assert cfg["features"] == [
        "island",
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "sex",
        "year",
    ]
    spec = cfg["preprocessing"]
    sex = next(c for c in spec["columns"] if c["name"] == "sex")
    assert sex["categories"] == ["(missing)", "female", "male"] and sex["fill"] == "(missing)"
    assert spec["outputs"][:3] == ["island=Biscoe", "island=Dream", "island=Torgersen"]
    assert cfg["architecture"]["in_features"] == len(spec["outputs"]) == 11
    assert sorted(p.suffix for p in penguins["model"].iterdir() if p.is_file()) == [
        ".json",
        ".png",
        ".safetensors",
        ".safetensors",
    ]


def test_penguins_predict_counts_an_unseen_category(penguins, tmp_path):
    frame = pd.read_csv(penguins["csv"]).drop(columns=["species"]).head(10)
    frame.loc[[2, 5], "island"] = "Atlantis"
    frame.loc[7, "bill_length_mm"] = np.nan
    new = tmp_path / "new.csv"
    frame.to_csv(new, index=False)
    res = run("predict", "--model", penguins["model"], "--data", new)
    table = pd.read_csv(io.StringIO(res.stdout))
    assert len(table) == 10 and set(table["predicted"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    np.testing.assert_allclose(table.filter(like="prob_").sum(axis=1), 1.0, atol=1e-6)
    assert (
        "column 'island': 2 rows with a category not seen in training ('Atlantis'), "
        "encoded as other" in res.stderr
    )
    # row 4 of the file has no measurements, row 8 lost its bill length here
    assert "column 'bill_length_mm': 2 missing values, filled with the training median" in (
        res.stderr
    )


def _sklearn_logistic_regression_accuracy(cfg: dict, csv: Path) -> float:
    """scikit-learn's own pipeline (ColumnTransformer + LogisticRegression) on crossent's split."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_csv(csv)
    y = data_mod.encode_labels(
        data_mod.label_strings(frame, "species", str(csv)), cfg["classes"], str(csv)
    )
    tr, va, why = data_mod.split_indices(y, cfg["training"]["val_split"], cfg["training"]["seed"])
    assert why is None and cfg["training"]["val_rows"] == len(va)
    kinds = {c["name"]: c["kind"] for c in cfg["preprocessing"]["columns"]}
    num = [n for n, k in kinds.items() if k == "numeric"]
    cat = [n for n, k in kinds.items() if k == "categorical"]
    X = frame[num + cat].astype({c: object for c in cat})
    X[cat] = X[cat].where(X[cat].notna(), None)
    pipe = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
                (
                    "cat",
                    make_pipeline(
                        SimpleImputer(missing_values=None, strategy="constant", fill_value="NA"),
                        OneHotEncoder(handle_unknown="ignore"),
                    ),
                    cat,
                ),
            ]
        ),
        LogisticRegression(max_iter=5000),
    ).fit(X.iloc[tr], y[tr])
    return float((pipe.predict(X.iloc[va]) == y[va]).mean())


def test_penguins_accuracy_next_to_logistic_regression(penguins, capsys):
    ev = penguins["tmp"] / "evaluation"
    res = run("evaluate", "--model", penguins["model"], "--data", penguins["csv"], "--out", ev)
    assert "held-out validation rows (69)" in res.stdout
    ours = json.loads((ev / "metrics.json").read_text())["accuracy"]
    cfg = json.loads((penguins["model"] / "config.json").read_text())
    ref = _sklearn_logistic_regression_accuracy(cfg, penguins["csv"])
    with capsys.disabled():
        print(
            f"\npenguins species, 69 held-out rows: crossent {ours:.2%}, "
            f"scikit-learn LogisticRegression {ref:.2%}"
        )
    assert ours >= ref - 0.01, (ours, ref)
    assert ours > 0.95


def _frame_for_transformers(frame: pd.DataFrame, spec: dict) -> pd.DataFrame:
    cat = [c["name"] for c in spec["columns"] if c["kind"] == "categorical"]
    out = frame[[c["name"] for c in spec["columns"]]].astype({c: object for c in cat})
    for c in cat:
        values = [None if v != v else columns.label(v) for v in frame[c].tolist()]
        out[c] = pd.Series(values, index=frame.index, dtype=object)  # None stays None
    return out


def test_json_preprocessing_equals_the_fitted_sklearn_transformers():
    """The JSON numbers, applied with numpy, give scikit-learn's transform, rare and unseen
    categories included (max_categories=3 puts 'Torgersen' into 'other')."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_csv(PENGUINS)
    labels = data_mod.label_strings(frame, "species", "p")
    plan = columns.plan_columns(frame, "species", "p", labels=labels)
    train = frame.iloc[::2]
    spec = preprocess.fit(train, plan, "p", max_categories=3)
    island = next(c for c in spec["columns"] if c["name"] == "island")
    assert island["categories"] == ["Biscoe", "Dream"] and island["other"] == ["Torgersen"]
    num = [c["name"] for c in spec["columns"] if c["kind"] == "numeric"]

    def cat_pipe(fill: dict) -> object:
        return make_pipeline(
            SimpleImputer(missing_values=None, **fill),
            OneHotEncoder(max_categories=3, handle_unknown="infrequent_if_exist"),
        )

    ct = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
            ("island", cat_pipe({"strategy": "most_frequent"}), ["island"]),
            ("sex", cat_pipe({"strategy": "constant", "fill_value": "(missing)"}), ["sex"]),
        ],
        sparse_threshold=0,
    ).fit(_frame_for_transformers(train, spec))
    new = frame.copy()
    new.loc[[0, 3, 9], "island"] = "Atlantis"  # unseen: the 'other' column, as sklearn does
    new.loc[[1, 4], "sex"] = None
    ours, report = preprocess.transform(spec, new, "new")
    order = [spec["outputs"].index(n) for n in num] + [
        i for i, n in enumerate(spec["outputs"]) if "=" in n
    ]
    ref = ct.transform(_frame_for_transformers(new, spec))
    np.testing.assert_allclose(ours[:, order], ref, rtol=0, atol=1e-12)
    assert report.unseen == {"island": {"Atlantis": 3}}
    assert report.imputed["sex"] == int(new["sex"].isna().sum())


def test_ids_leaks_and_overrides(tmp_path):
    n = 40
    rows = [
        [f"P{i:04d}", 1000 + (i // 2) * 3, i % 4, ["a", "b"][i % 2], ["x", "y"][i % 2], i * 0.37]
        for i in range(n)
    ]
    header = ["code", "counter", "group", "label", "copy", "value"]
    path = write_csv(tmp_path / "t.csv", header, rows)
    res = run("train", "--data", path, "--target", "label", "--epochs", "1", expect=2)
    assert "column 'copy' of " in res.stderr and "one-to-one relabelling" in res.stderr
    out = tmp_path / "m"
    res = run(
        "train", "--data", path, "--target", "label", "--drop", "copy", "--categorical",
        "group", "--keep", "counter", "--epochs", "1", "--out", out, "-q",
    )  # fmt: skip
    assert "column 'code' left out: it is unique per row" in res.stderr
    assert "counter" not in res.stderr  # kept by --keep
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"] == ["counter", "group", "value"]
    group = next(c for c in cfg["preprocessing"]["columns"] if c["name"] == "group")
    assert group["kind"] == "categorical" and group["categories"] == ["0", "1", "2", "3"]
    res = run("data", path, "--target", "label", "--drop", "copy")
    assert "left out: it grows with the row number" in res.stdout  # counter, without --keep
    rows = [[r[0], r[1], r[2], r[3], r[3]] for r in rows]
    same = write_csv(tmp_path / "s.csv", header[:5], rows)
    res = run("train", "--data", same, "--target", "label", expect=2)
    assert "is identical to the target 'label'" in res.stderr


def test_dates_expanded_or_dropped(tmp_path):
    days = pd.date_range("2021-01-01", periods=60, freq="D")
    rows = [[d.strftime("%Y-%m-%d"), i % 3 * 1.5, "sunny" if d.month == 1 else "rain"]
            for i, d in enumerate(days)]  # fmt: skip
    path = write_csv(tmp_path / "w.csv", ["date", "wind", "weather"], rows)
    out = tmp_path / "m"
    res = run("train", "--data", path, "--target", "weather", "--out", out, "--epochs", "1")
    assert "date column 'date' expanded into date_year, date_month, date_dayofweek" in res.stderr
    spec = json.loads((out / "config.json").read_text())["preprocessing"]
    assert spec["outputs"] == ["date_year", "date_month", "date_dayofweek", "wind"]
    X, _ = preprocess.transform(spec, pd.read_csv(path), "w")
    month = (
        X[:, 1] * spec["columns"][0]["parts"][1]["scale"] + spec["columns"][0]["parts"][1]["mean"]
    )
    np.testing.assert_allclose(month, [d.month for d in days])
    res = run("train", "--data", path, "--target", "weather", "--dates", "drop",
              "--out", tmp_path / "d", "--epochs", "1")  # fmt: skip
    assert "note: date column 'date' left out (--dates drop)" in res.stderr
    assert json.loads((tmp_path / "d" / "config.json").read_text())["features"] == ["wind"]


def test_numeric_column_with_a_missing_marker(tmp_path):
    rows = [[("?" if i % 13 == 0 else f"{i * 0.5}"), "ab"[i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "q.csv", ["x", "y"], rows)
    res = run("train", "--data", path, "--target", "y", "--out", tmp_path / "m", "--epochs", "1")
    assert "note: column 'x': '?' read as missing values" in res.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["preprocessing"]["columns"][0]["kind"] == "numeric"


def test_data_describes_a_csv_file(penguins):
    out = run("data", penguins["csv"], "--target", "species").stdout
    assert out.splitlines()[0].endswith(": 344 rows, 9 columns (delimiter comma (sniffed), UTF-8)")
    lines = {line.split()[0]: line for line in out.splitlines()[2:11]}
    assert lines["rowid"].split()[1:4] == ["numeric", "0", "344"] and "left out" in lines["rowid"]
    assert lines["island"].split()[1:4] == ["categorical", "0", "3"]
    assert lines["sex"].split()[1:4] == ["categorical", "11", "2"]
    assert lines["bill_length_mm"].split()[1:3] == ["numeric", "2"]
    assert "target 'species': 3 classes" in out and "Adelie                       152" in out
    assert "the default validation split (20%) is stratified" in out
    # without --target: the columns only
    assert "classes" not in run("data", PENGUINS).stdout


@pytest.mark.parametrize(
    "values, fmt",
    [
        (["04/03/2021", "05/03/2021"], "%m/%d/%Y"),  # ambiguous: month first, as pandas
        (["04/03/2021", "13/03/2021"], "%d/%m/%Y"),  # 13 cannot be a month: day first
        (["2012-01-01", "2012-01-02 10:00"], None),  # ISO 8601, dates and date-times mixed
        (["2021-01-02", "2021-02-30"], False),  # no 30 February: not a date column
        (["Dream", "Biscoe"], False),
        (["1", "2"], False),
    ],
)
def test_date_formats(values, fmt):
    assert columns.date_format(pd.Series(values, dtype=object)) == fmt
