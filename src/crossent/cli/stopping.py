"""When training stops, and which epoch's weights are kept.

The default budget (no --epochs) counts optimizer steps, not epochs, so a 200-row table gets as
many updates as a 20000-row one:

    max_epochs = clamp(ceil(STEP_BUDGET / steps_per_epoch), MIN_EPOCHS, MAX_EPOCHS)
    patience   = max(MIN_PATIENCE, ceil(PATIENCE_STEPS / steps_per_epoch))   epochs

and training stops early when the monitored loss (the validation loss; the training loss when
--val-split is 0) has not improved by a relative TOLERANCE for `patience` epochs. With --epochs N
exactly N epochs run (no early stop). Either way the weights of the epoch with the lowest
validation loss are restored before saving (--keep-epoch last keeps the final ones), and the run says
which epoch that was and why it stopped.

The learning-rate schedule (--schedule plateau, the default) is torch's ReduceLROnPlateau on the
same loss: the rate halves after PLATEAU_SHARE of the patience without improvement.

Measured on the 2-core machine (README, "Command line"): grunfeld (220 rows, 11 classes) ends at
a validation accuracy of ~91% where 50 fixed epochs gave 52.7%; a 600 x 1000 table made to
overfit keeps the epoch-4 weights instead of the epoch-50 ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

STEP_BUDGET = 20_000  # optimizer steps in the default budget
MIN_EPOCHS = 20
MAX_EPOCHS = 2_000
PATIENCE_STEPS = 600  # steps without improvement before stopping
MIN_PATIENCE = 10  # epochs
TOLERANCE = 1e-4  # relative improvement that counts (scikit-learn's tol for its MLP is 1e-4)
PLATEAU_SHARE = 1 / 3  # of the patience: epochs without improvement before the rate halves


def budget(n_train: int, batch_size: int) -> tuple[int, int]:
    """(max_epochs, patience in epochs) for `n_train` training rows in batches of `batch_size`."""
    steps = max(1, -(-n_train // batch_size))
    max_epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(STEP_BUDGET / steps)))
    patience = max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / steps))
    return max_epochs, patience


@dataclass
class EarlyStopping:
    """Tracks the best epoch of the monitored loss; `stop` once `patience` epochs did not improve
    it (never when `patience` is None). Its state goes into every checkpoint."""

    patience: int | None
    monitor: str  # "val_loss" or "train_loss"
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, entry: dict[str, Any]) -> bool:
        """Record one history entry; True when it is the new best."""
        value = entry[self.monitor]
        if not math.isfinite(self.best) or value < self.best - TOLERANCE * abs(self.best):
            self.best, self.best_epoch, self.bad_epochs = value, entry["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self, epoch: int, max_epochs: int, forced: bool) -> str:
        """Why the run ended after `epoch` (one clause, for the summary and config.json)."""
        what = "validation loss" if self.monitor == "val_loss" else "training loss"
        if self.stop:
            return (
                f"stopped after epoch {epoch}: the {what} had not improved for "
                f"{self.bad_epochs} epochs (patience {self.patience})"
            )
        if forced:
            return f"ran the {max_epochs} epochs of --epochs"
        return f"reached the budget's cap of {max_epochs} epochs, the {what} still improving"


def plateau_scheduler(opt: Any, patience: int, schedule: str) -> Any:
    """torch's ReduceLROnPlateau on the monitored loss, or None for --schedule none."""
    if schedule == "none":
        return None
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=0.5,
        patience=max(1, round(patience * PLATEAU_SHARE)),
        threshold=TOLERANCE,
    )
