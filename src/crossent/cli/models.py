"""The small classifiers the command line trains, and their training loss built from crossent.

    linear   x (N, D) -> Linear(D, K)                                      -> logits (N, K)
    mlp      x (N, D) -> [Linear -> ReLU] per hidden width -> Linear(., K) -> logits (N, K)

K = 1 for a binary task (one logit, sigmoid + BCE-with-logits) and K = number of classes for a
multi-class task (softmax + cross-entropy). The whole model is described by a small dict
(`architecture`) stored in the model folder's config.json, so loading needs no pickle.

This module imports torch at the top: commands import it inside their function bodies only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import crossent
import crossent.nn

from ._errors import CliError

KINDS = ("linear", "mlp")
TASKS = ("binary", "multiclass")


class Classifier(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = ()):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, K)
        return self.layers(x)


def architecture(kind: str, in_features: int, n_classes: int, task: str, hidden: Sequence[int]):
    out = 1 if task == "binary" else n_classes
    return {
        "kind": kind,
        "in_features": int(in_features),
        "hidden": [int(h) for h in hidden] if kind == "mlp" else [],
        "out_features": out,
    }


def build(arch: dict[str, Any]) -> Classifier:
    try:
        if arch["kind"] not in KINDS:
            raise ValueError(arch["kind"])
        return Classifier(int(arch["in_features"]), int(arch["out_features"]), arch["hidden"])
    except (KeyError, TypeError, ValueError) as e:
        raise CliError(
            f"the model's architecture {arch!r} is not one this crossent builds ({e}); "
            "retrain the model with this version"
        )


def make_loss(
    task: str, class_weights: Sequence[float] | None, label_smoothing: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits (N, K), target class indices (N,)) -> scalar, with crossent's losses.

    multiclass: crossent.nn.CrossEntropyLoss(weight, label_smoothing); weighted 'mean' is
                sum_i w[t_i] * l_i / sum_i w[t_i], as in torch.
    binary:     crossent BCE-with-logits on the single logit. Label smoothing has no argument in
                BCE, so it is applied to the target as y * (1 - eps) + eps / 2 (the two-class case
                of CE's smoothing). Class weights become per-sample weights w[y_i], normalised like
                CE's weighted mean, so 'balanced' means the same thing for both tasks.
    """
    if task == "multiclass":
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        ce = crossent.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        return lambda logits, y: ce(logits, y)

    if class_weights is None:
        bce = crossent.nn.BCEWithLogitsLoss()

        def binary(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            soft = y.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
            return bce(logits[:, 0], soft)

        return binary

    w_class = torch.tensor(class_weights, dtype=torch.float32)

    def binary_weighted(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        soft = y.to(logits.dtype) * (1 - label_smoothing) + label_smoothing / 2
        w = w_class[y]  # (N,)
        total = crossent.binary_cross_entropy_with_logits(
            logits[:, 0], soft, weight=w, reduction="sum"
        )
        return total / w.sum()

    return binary_weighted


def probabilities(model: nn.Module, X: np.ndarray, task: str) -> np.ndarray:
    """(N, D) scaled features -> (N, K) class probabilities (binary: [1 - p, p])."""
    model.eval()
    with torch.no_grad():
        # the model runs in float32; the probabilities are taken in float64 so each row sums
        # to 1 within 1e-15 (scikit-learn's log_loss checks that)
        logits = model(torch.as_tensor(X, dtype=torch.float32)).double()
        if task == "binary":
            p1 = torch.sigmoid(logits[:, 0])
            probs = torch.stack([1 - p1, p1], dim=1)
        else:
            probs = torch.softmax(logits, dim=1)
    return probs.numpy()


def scale(X: np.ndarray, scaling: dict[str, list[float]]) -> np.ndarray:
    """Standardise with the training split's mean and scale, stored in config.json."""
    return (X - np.asarray(scaling["mean"])) / np.asarray(scaling["scale"])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with n intra-op threads, then restore the previous number.

    These models are tiny (a batch of 32 rows through a 64-wide layer): waking a thread pool for
    each op costs more than it saves, and on a busy machine far more. Measured on this 2-core
    machine under load, the tutorial's 1000 steps took 0.6 s on 1 thread and 4 to 18 s on 2.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
