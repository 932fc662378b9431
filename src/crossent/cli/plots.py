"""PNG plots with matplotlib's Agg backend (no display needed) and scikit-learn's Display classes.

Each function draws one figure and writes it atomically (rendered to memory, then `_files`).
Text from the data (class names, file names) goes through `drawable` first: characters the font
has no glyph for (emoji, most symbols) would be drawn as empty boxes, with a matplotlib warning
per character on stderr, so they are left out ('☀️ sunny' -> 'sunny').
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window, works without a display
    import matplotlib.pyplot as plt

    return plt


INVISIBLE = "\ufe0e\ufe0f\u200d"


@functools.cache
def _charmap() -> frozenset[int]:
    """The code points matplotlib's default font can draw."""
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties())
    return frozenset(ft2font.FT2Font(path).get_charmap())


def drawable(text: str) -> str:
    """`text` without the characters the default font lacks (blanks collapsed); a text left
    empty becomes its characters' Unicode names, so two classes stay apart."""
    import re
    import unicodedata

    chars = _charmap()
    if all(ord(c) in chars or c == "\n" for c in text):
        return text
    # variation selectors and joiners (U+FE0E, U+FE0F, U+200D) only dress the emoji dropped
    drawn = "".join(c for c in text if (ord(c) in chars or c == "\n") and c not in INVISIBLE)
    kept = re.sub(r"[ \t]+", " ", drawn).strip()
    if kept:
        return kept
    names = [unicodedata.name(c, "") for c in text if not c.isspace()]
    return " ".join(n.lower() for n in names if n) or "?"


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return _files.write_bytes(path, buf.getvalue())


def loss_curves(
    curves: dict[str, Sequence[float | None]],
    path: str | Path,
    title: str,
    ylabel: str = "loss",
    mark: tuple[int, str] | None = None,
) -> Path:
    """One line per named curve, x = epoch (1-based). None values (no validation) are skipped.
    `mark` = (epoch, label): a dashed vertical line there (the epoch whose weights were kept)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, values in curves.items():
        points = [(i + 1, v) for i, v in enumerate(values) if v is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=drawable(label), linewidth=1.6)
    if mark is not None and mark[0] > 0:
        ax.axvline(mark[0], color="grey", linestyle="--", linewidth=1.0, label=drawable(mark[1]))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(drawable(title))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def confusion(
    y_true: Any, y_pred: Any, classes: Sequence[str], path: str | Path, title: str
) -> Path:
    plt = _pyplot()
    size = min(4.0 + 0.45 * len(classes), 12.0)
    fig, ax = plt.subplots(figsize=(size, size))
    rotation = 45 if max(len(c) for c in classes) > 6 else "horizontal"
    _confusion_panel(ax, y_true, y_pred, classes, title, rotation)
    return _save(fig, path)


def _confusion_panel(
    ax: Any, y_true: Any, y_pred: Any, classes: Sequence[str], title: str, rotation: Any
) -> None:
    """scikit-learn's confusion matrix of class indices on `ax`, drawable labels, no colorbar."""
    from sklearn.metrics import ConfusionMatrixDisplay

    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(classes))),
        display_labels=[drawable(c) for c in classes],
        ax=ax,
        colorbar=False,
        xticks_rotation=rotation,
    )
    ax.set_title(drawable(title))


def roc(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    shown: Sequence[int] | None = None,
) -> Path:
    """Binary: one curve for the positive class. Multi-class: one-vs-rest curve per class in
    `shown` (default: every class)."""
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.4))
    k = len(classes)
    if shown is None:
        shown = [1] if k == 2 else range(k)
    elif k > len(shown):
        title = f"{title}\n(the {len(shown)} largest of {k} classes)"
    for c in shown:
        positives = y_true == c
        if positives.all() or not positives.any():
            continue  # ROC needs both positives and negatives
        RocCurveDisplay.from_predictions(
            positives, probs[:, c], name=drawable(classes[c]) + (" vs rest" if k > 2 else ""), ax=ax
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    # sklearn labels the axes "(Positive label: 1)" for our 0/1 one-vs-rest masks: say it plainly
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(drawable(title))
    ax.legend(loc="lower right", fontsize=7 if k > 6 else None)
    return _save(fig, path)


def calibration(y_true: Any, probs: Any, path: str | Path, title: str, n_bins: int = 10) -> Path:
    """Reliability diagram, binned like the calibration error in metrics.json.

    Binary: is p(class 1) = 0.8 right 80% of the time? Multi-class: the same for the confidence
    of the predicted class (top-label).
    """
    from sklearn.calibration import CalibrationDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    if probs.shape[1] == 2:
        hit, conf, name = y_true == 1, probs[:, 1], "p(class 1)"
        xlabel, ylabel = "predicted probability of class 1", "fraction of class 1"
    else:
        hit, conf, name = probs.argmax(axis=1) == y_true, probs.max(axis=1), "top-label"
        xlabel, ylabel = "confidence of the predicted class", "fraction correct"
    CalibrationDisplay.from_predictions(hit, conf, n_bins=n_bins, ax=ax, name=name, pos_label=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(drawable(title))
    return _save(fig, path)


def confusion_pair(
    y_true: Any, predictions: dict[str, Any], classes: Sequence[str], path: str | Path, title: str
) -> Path:
    """Confusion matrices of several models on the same rows, side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(predictions), figsize=(4.2 * len(predictions), 4.2), constrained_layout=True
    )
    for i, (ax, (name, pred)) in enumerate(zip(axes, predictions.items())):
        _confusion_panel(ax, y_true, pred, classes, name, "horizontal")
        if i:
            ax.set_ylabel("")  # shared with the first panel
    fig.suptitle(drawable(title))
    return _save(fig, path)
