"""The numbers and the on-screen report of `crossent evaluate`, from 2 classes to thousands.

Accuracy, precision/recall/F1 (per class, macro, weighted), the confusion matrix and ROC-AUC are
scikit-learn's. Three are written here because scikit-learn's versions cost far more than the
numbers they compute at thousands of classes (measured on 20000 rows x 2000 classes on the
project's 2-core machine: top_k_accuracy_score 5.0 s (a full argsort of every row), log_loss
4.7 s (a dense one-hot copy of the labels), roc_auc_score one-vs-rest 16 s):

    log loss       -mean_i log(clip(p[i, y_i], eps, 1 - eps)), eps = float64 machine epsilon:
                   scikit-learn's formula, O(N) instead of O(N x C); tests compare the two
    top-k accuracy share of rows whose true class is among the k most probable, from the rank
                   of the true class: #{c : p[i, c] >= p[i, y_i]} - 1 < k (a tie counts against
                   the true class); O(N x C) with no sort; tests compare with scikit-learn's
    calibration    the expected calibration error, which scikit-learn does not have: bins as
                   torchmetrics' Binary/MulticlassCalibrationError (equal-width (lo, hi], L1)

ROC-AUC is computed up to `AUC_MAX_CLASSES` classes and reported as n/a with the reason above.
Memory stays O(N x C) (the probabilities themselves): no C x C table becomes Python objects
beyond `DENSE_CONFUSION_MAX` classes, where the confusion matrix is kept as its non-zero
(true, predicted, count) cells instead. The screen shows at most `SCREEN_CLASSES` classes (the
largest by support), the full per-class table goes to per_class.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ECE_BINS = 15
TOP_K = (3, 5, 10)
AUC_MAX_CLASSES = 100
DENSE_CONFUSION_MAX = 100  # classes: metrics.json holds the matrix up to here (10^4 cells)
SCREEN_CLASSES = 20  # classes in the on-screen table and matrix
MOST_CONFUSED = 10  # off-diagonal pairs shown when the matrix is too large to print


def calibration_error(y_true: Any, probs: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (rows in bin / N) * |accuracy - confidence|.

    Binary (K = 2): confidence = p(class 1), "accuracy" = fraction of class 1 in the bin.
    Multi-class: confidence = max_c p_c, accuracy = fraction of argmax predictions that are right.
    """
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.shape[1] == 2:
        conf, hit = probs[:, 1], (y_true == 1).astype(np.float64)
    else:
        conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds (edges[b], edges[b+1]]; a confidence of exactly 0 goes to the first bin
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hit, minlength=n_bins)
    used = count > 0
    gap = np.abs(hit_sum[used] / count[used] - conf_sum[used] / count[used])
    return float(np.sum(count[used] / len(conf) * gap))


def true_class_rank(y_true: Any, probs: Any, chunk_rows: int = 4096) -> Any:
    """(N,) 0-based rank of the true class: classes at least as probable, itself excluded."""
    import numpy as np

    ranks = np.empty(len(y_true), dtype=np.int64)
    for lo in range(0, len(y_true), chunk_rows):  # a (chunk, C) bool temporary, not (N, C)
        p = probs[lo : lo + chunk_rows]
        p_true = p[np.arange(len(p)), y_true[lo : lo + chunk_rows]]
        ranks[lo : lo + chunk_rows] = (p >= p_true[:, None]).sum(axis=1) - 1
    return ranks


def log_loss(y_true: Any, probs: Any) -> float:
    import numpy as np

    eps = np.finfo(np.float64).eps
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], eps, 1 - eps)
    return float(-np.log(p_true).mean())


def confusion_cells(y_true: Any, pred: Any, k: int) -> Any:
    """(M, 3) int64 rows (true, predicted, count) of the non-zero cells, largest count first."""
    import numpy as np

    cells, counts = np.unique(y_true.astype(np.int64) * k + pred, return_counts=True)
    order = np.lexsort((cells, -counts))
    return np.stack([cells[order] // k, cells[order] % k, counts[order]], axis=1)


def compute_metrics(y_true: Any, probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Every number of the report, from the true class indices and (N, K) probabilities."""
    import numpy as np
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    k = len(classes)
    labels = list(range(k))
    pred = probs.argmax(axis=1)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {
        "rows": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
    }
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = skm.precision_recall_fscore_support(
            y_true, pred, labels=labels, average=avg, zero_division=0
        )
        out[avg] = {"precision": float(pa), "recall": float(ra), "f1": float(fa)}
    shown_k = [t for t in TOP_K if t < k]
    if shown_k:
        rank = true_class_rank(y_true, probs)
        out["top_k_accuracy"] = {str(t): float((rank < t).mean()) for t in shown_k}

    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"], out["roc_auc_note"] = None, "undefined: the data holds a single class"
    elif k == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
        out["roc_auc_note"] = f"binary, positive class {classes[1]!r}"
    elif k > AUC_MAX_CLASSES:
        out["roc_auc"] = None
        out["roc_auc_note"] = (
            f"not computed above {AUC_MAX_CLASSES} classes, one curve each; see the top-k accuracy"
        )
    elif len(present) < k:
        out["roc_auc"] = None
        out["roc_auc_note"] = "undefined one-vs-rest: some classes have no rows in this data"
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
        out["roc_auc_note"] = "one-vs-rest, macro average"
    out["log_loss"] = log_loss(y_true, probs)
    out["calibration_error"] = calibration_error(y_true, probs)
    out["calibration_error_note"] = f"expected calibration error, {ECE_BINS} equal-width bins"
    if k <= DENSE_CONFUSION_MAX:
        out["confusion_matrix"] = skm.confusion_matrix(y_true, pred, labels=labels).tolist()
    else:
        out["confusion_matrix"] = None
        out["confusion_matrix_note"] = (
            f"{k} classes: the non-zero cells are in confusion_pairs.csv (true, predicted, rows)"
        )
    out["classes"] = list(classes)
    return out


def _row(name: str, values: Sequence[float], support: int, width: int) -> str:
    cells = "".join(f" {v:>9.4f}" for v in values)
    return f"{name[:width]:>{width}} {cells} {support:>9}"


def report(y_true: Any, probs: Any, classes: Sequence[str], m: dict[str, Any]) -> str:
    """The table on screen: scikit-learn's classification report (the largest classes when there
    are more than SCREEN_CLASSES), then the other numbers; its length does not grow with K."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import classification_report

    k = len(classes)
    lines: list[str] = []
    if k <= SCREEN_CLASSES:
        lines.append(
            classification_report(
                y_true,
                probs.argmax(axis=1),
                labels=list(range(k)),
                target_names=list(classes),
                digits=4,
                zero_division=0,
            ).rstrip()
        )
    else:  # the same layout, the largest classes only, averages over all of them
        per = m["per_class"]
        largest = sorted(classes, key=lambda c: (-per[c]["support"], c))[:SCREEN_CLASSES]
        width = max(12, *(min(len(c), 30) for c in largest))
        lines.append(
            f"{'':>{width}}  {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
        )
        lines.append("")
        for c in largest:
            e = per[c]
            lines.append(_row(c, [e["precision"], e["recall"], e["f1"]], e["support"], width))
        lines.append(f"{'':>{width}}  ({k - SCREEN_CLASSES} smaller classes in per_class.csv)")
        lines.append("")
        n = m["rows"]
        lines.append(f"{'accuracy':>{width}} {'':>20} {m['accuracy']:>9.4f} {n:>9}")
        for avg in ("macro", "weighted"):
            a = m[avg]
            lines.append(_row(f"{avg} avg", [a["precision"], a["recall"], a["f1"]], n, width))
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    lines += [""]
    for t, v in (m.get("top_k_accuracy") or {}).items():
        lines.append(f"top-{t} accuracy{'':<{4 - len(t)}} {v:.4f}")
    lines += [
        f"ROC-AUC            {auc}  ({m['roc_auc_note']})",
        f"log loss           {m['log_loss']:.4f}",
        f"calibration error  {m['calibration_error']:.4f}  ({m['calibration_error_note']})",
        "",
    ]
    if k <= SCREEN_CLASSES:
        lines += [
            "confusion matrix (rows: true class, columns: predicted class)",
            pd.DataFrame(
                m["confusion_matrix"], index=list(classes), columns=list(classes)
            ).to_string(),
        ]
    else:
        cells = confusion_cells(np.asarray(y_true), probs.argmax(axis=1), k)
        wrong = cells[cells[:, 0] != cells[:, 1]][:MOST_CONFUSED]
        lines.append(
            f"most confused pairs ({k} classes; every pair in confusion_pairs.csv)"
            if len(wrong)
            else "no row is misclassified"
        )
        for t, pr, n in wrong:
            lines.append(f"  {n:>7} rows of {classes[t]!r} predicted as {classes[pr]!r}")
    return "\n".join(lines)


def tables(y_true: Any, probs: Any, classes: Sequence[str], m: dict[str, Any]) -> dict[str, str]:
    """CSV files beside metrics.json: per_class.csv always, confusion_pairs.csv when the matrix is
    not in metrics.json. File name -> text."""
    import numpy as np
    import pandas as pd

    per = pd.DataFrame(
        [{"class": c, **m["per_class"][c]} for c in classes],
        columns=["class", "precision", "recall", "f1", "support"],
    ).sort_values(["support", "class"], ascending=[False, True], kind="stable")
    out = {"per_class.csv": per.to_csv(index=False)}
    if m.get("confusion_matrix") is None:
        cells = confusion_cells(np.asarray(y_true), probs.argmax(axis=1), len(classes))
        names = np.asarray(classes, dtype=object)
        pairs = pd.DataFrame(
            {"true": names[cells[:, 0]], "predicted": names[cells[:, 1]], "rows": cells[:, 2]}
        )
        out["confusion_pairs.csv"] = pairs.to_csv(index=False)
    return out
