"""How `crossent train`'s defaults converge, next to scikit-learn, on two small tables.

    .venv/bin/pip install statsmodels            # ships the grunfeld table (220 rows, 11 firms)
    .venv/bin/python examples/cli_convergence.py
    .venv/bin/python examples/cli_convergence.py --tables overfit --seeds 0,1,2

Tables:
    grunfeld   statsmodels' Grunfeld investment data: predict the firm (11 classes) from invest,
               value, capital and year (220 rows)
    overfit    600 rows x 1000 Gaussian features, a binary label from 3 of them plus noise: an
               MLP memorises the training rows within a few epochs

Each table is split once (stratified, 20% test rows, seed 0); the test rows are never seen by
any model. crossent trains on the other 80% through the Python API (`crossent.cli.api`, the
code of `crossent train`), holding out its own 20% validation split for early stopping;
scikit-learn's LogisticRegression and HistGradientBoostingClassifier train on all of the 80%,
with the same preprocessing (median imputation and standardisation; numbers only here). Rows:
held-out accuracy and log loss, and for crossent the epochs run and the epoch kept.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def grunfeld() -> tuple[pd.DataFrame, str]:
    try:
        from statsmodels.datasets import grunfeld as g
    except ImportError as e:
        raise SystemExit(f"grunfeld needs statsmodels ({e}); pip install statsmodels") from None
    return g.load_pandas().data, "firm"


def overfit(n: int = 600, d: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] + X[:, 2] + rng.normal(scale=1.0, size=n) > 0).astype(int)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(d)])
    frame["label"] = np.where(y == 1, "yes", "no")
    return frame, "label"


TABLES = {"grunfeld": grunfeld, "overfit": overfit}


def sklearn_scores(dev: pd.DataFrame, test: pd.DataFrame, target: str) -> dict[str, tuple]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = [c for c in dev.columns if c != target]
    out = {}
    for name, model in (
        ("scikit-learn LogisticRegression", LogisticRegression(max_iter=5000)),
        ("scikit-learn HistGradientBoosting", HistGradientBoostingClassifier(random_state=0)),
    ):
        pipe = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), model)
        pipe.fit(dev[feats], dev[target])
        probs = pipe.predict_proba(test[feats])
        pred = pipe.classes_[probs.argmax(1)]
        out[name] = (
            accuracy_score(test[target], pred),
            log_loss(test[target], probs, labels=pipe.classes_),
            "",
        )
    return out


def crossent_scores(dev, test, target, label, **options) -> tuple:
    from crossent.cli import api

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = api.train(dev, target, out=Path(tmp) / "m", **options)
        seconds = time.perf_counter() - t0
        m = api.evaluate(Path(tmp) / "m", test)
    note = f"{len(result.history)} epochs, kept {result.kept_epoch}, {seconds:.0f} s"
    return label, (m["accuracy"], m["log_loss"], note)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="grunfeld,overfit")
    args = p.parse_args()
    from sklearn.model_selection import train_test_split

    for name in args.tables.split(","):
        frame, target = TABLES[name]()
        dev, test = train_test_split(frame, test_size=0.2, random_state=0, stratify=frame[target])
        rows = {}
        rows.update(
            [
                crossent_scores(dev, test, target, "crossent train (new defaults)"),
                crossent_scores(
                    dev, test, target, "crossent train --epochs 50 --schedule none "
                    "--keep-epoch last (the old default)",
                    epochs=50, schedule="none", keep_epoch="last",
                ),
            ]
        )  # fmt: skip
        rows.update(sklearn_scores(dev, test, target))
        print(f"\n{name}: {len(frame)} rows, {len(test)} test rows never seen in training")
        print("| model | test accuracy | test log loss | run |\n|---|---|---|---|")
        for label, (acc, ll, note) in rows.items():
            print(f"| {label} | {acc:.2%} | {ll:.4f} | {note} |")


if __name__ == "__main__":
    main()
