"""The training loop of `crossent train`: epochs of mini-batches, a checkpoint after each, the
stopping rule and the learning-rate schedule of `stopping`.

Each epoch visits the training rows in mini-batches, in an order drawn from `rng` alone, then
scores the validation rows. The checkpoint holds the model, the optimizer, `rng`, the schedule,
the stopping rule's state and the best epoch's weights, so a run resumed from epoch k draws the
same batches, takes the same steps and keeps the same best epoch as one never stopped (tests/cli
check the final weights are equal).

torch and tqdm are imported inside the functions: `crossent train --help` imports this module.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .config import OPTIMIZERS  # noqa: F401 - the choices of --optimizer
from .stopping import EarlyStopping

CHECKPOINT_SECONDS = 5.0


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float, momentum: float):
    """torch's optimizer `name` (one of OPTIMIZERS) over `params`; momentum is SGD's only."""
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def progress_line(entry: dict[str, Any], epochs: int) -> str:
    """'epoch 3/5: train loss …[, validation loss …, accuracy …%]' for one history entry."""
    text = f"epoch {entry['epoch']}/{epochs}: train loss {entry['train_loss']:.4f}"
    if entry.get("val_loss") is not None:
        text += f", validation loss {entry['val_loss']:.4f}, accuracy {entry['val_accuracy']:.2%}"
    return text


def _reported(epoch: int, max_epochs: int, forced: bool) -> bool:
    """A progress line after this epoch? Every tenth of a fixed run; 1, 2, 5, 10, 20, 50, ...
    in the default budget, whose length is not known in advance."""
    if epoch >= max_epochs:
        return False
    if forced:
        return epoch % max(1, max_epochs // 10) == 0
    digits = str(epoch)
    return digits[0] in "125" and set(digits[1:]) <= {"0"}


@dataclass
class Loop:
    """Everything one training run's epochs need.

    `train` and `val` are (x (N, D) float32, y (N,) class indices); `val` may have no rows.
    `scheduler` is a ReduceLROnPlateau or None; `forced`: --epochs gave `max_epochs`."""

    model: Any
    opt: Any
    loss_fn: Any
    rng: Any
    scheduler: Any
    stopping: EarlyStopping
    train: tuple[Any, Any]
    val: tuple[Any, Any]
    task: str
    batch_size: int
    max_epochs: int
    forced: bool
    ckpt: Path
    run: dict[str, Any]
    quiet: bool
    best_state: dict[str, Any] | None = None  # the best epoch's weights (tensors)
    saved_epoch: int = 0  # the epoch of the last checkpoint written
    saved_at: float = 0.0  # time.monotonic() then

    def checkpoint(self, history: list[dict[str, Any]]) -> None:
        from . import store

        meta = {
            "epoch": len(history),
            "history": history,
            "run": self.run,
            "max_epochs": self.max_epochs,
            "stopping": self.stopping.state(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }
        store.save_checkpoint(self.ckpt, self.model, self.opt, self.rng, meta, self.best_state)
        self.saved_epoch, self.saved_at = len(history), time.monotonic()

    def restore(self, meta: dict[str, Any]) -> None:
        """Continue from a checkpoint's meta (`store.load_checkpoint` filled model, optimizer and
        rng): the stopping rule, the schedule and the best weights."""
        state = meta.get("stopping") or {}
        for key in ("best", "best_epoch", "bad_epochs"):
            if key in state:
                setattr(self.stopping, key, state[key])
        if self.scheduler is not None and meta.get("scheduler"):
            self.scheduler.load_state_dict(meta["scheduler"])
        self.best_state = meta.get("best_state") or None


def _epoch(loop: Loop, epoch: int, bar: Any) -> dict[str, Any]:
    """One pass over the training rows in a shuffled order, then the validation rows."""
    import torch

    x_tr, y_tr = loop.train
    x_va, y_va = loop.val
    n = len(y_tr)
    loop.model.train()
    order = torch.randperm(n, generator=loop.rng)
    total = 0.0
    for i in range(0, n, loop.batch_size):
        idx = order[i : i + loop.batch_size]
        loop.opt.zero_grad()
        loss = loop.loss_fn(loop.model(x_tr[idx]), y_tr[idx])
        loss.backward()
        loop.opt.step()
        total += loss.item() * len(idx)
        bar.update()
    entry: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": total / n,
        "val_loss": None,
        "val_accuracy": None,
        "lr": loop.opt.param_groups[0]["lr"],
    }
    if len(y_va):
        loop.model.eval()
        with torch.no_grad():
            logits = loop.model(x_va)
            entry["val_loss"] = loop.loss_fn(logits, y_va).item()
            pred = (logits[:, 0] > 0).long() if loop.task == "binary" else logits.argmax(1)
            entry["val_accuracy"] = (pred == y_va).double().mean().item()
    return entry


def _after_epoch(loop: Loop, entry: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Stopping rule, best weights, schedule, checkpoint (when due): in this order."""
    if loop.stopping.update(entry):
        loop.best_state = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
    if loop.scheduler is not None:
        loop.scheduler.step(entry[loop.stopping.monitor])
    history.append(entry)
    if time.monotonic() - loop.saved_at >= CHECKPOINT_SECONDS:
        loop.checkpoint(history)


def run_epochs(loop: Loop, start: int, history: list[dict[str, Any]]) -> str:
    """Train epochs start+1 .. until the stopping rule or `max_epochs`; return why it ended.

    `history` holds the epochs before `start` and gets one {epoch, train_loss, val_loss,
    val_accuracy, lr} per epoch. Unless `quiet`, a progress bar over the batches (on a terminal
    only) and progress lines. Ctrl-C ends the process with exit code 130 after saying where the
    last checkpoint is. The model is left with the last epoch's weights (see `keep_best`).
    """
    from tqdm.auto import tqdm

    batches = -(-len(loop.train[1]) // loop.batch_size)  # per epoch
    # one bar over every batch of the run, so a long epoch moves it too; `disable=None` is tqdm's
    # own test: no bar when stderr is not a terminal (a log file, a pipe, CI)
    bar = tqdm(
        total=loop.max_epochs * batches,
        initial=start * batches,
        desc=f"epoch {start + 1}/{loop.max_epochs}",
        unit="batch",
        disable=True if loop.quiet else None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    epoch = loop.saved_epoch = start
    loop.saved_at = time.monotonic()
    try:
        while epoch < loop.max_epochs and not loop.stopping.stop:
            epoch += 1
            bar.set_description(f"epoch {epoch}/{loop.max_epochs}", refresh=False)
            entry = _epoch(loop, epoch, bar)
            _after_epoch(loop, entry, history)
            bar.set_postfix(loss=f"{entry['train_loss']:.4f}")
            if not loop.quiet and _reported(epoch, loop.max_epochs, loop.forced):
                # tqdm.write keeps a live bar below the lines
                (click.echo if bar.disable else bar.write)(progress_line(entry, loop.max_epochs))
    except KeyboardInterrupt:
        bar.close()
        if loop.saved_epoch:
            said = (
                f"the last checkpoint (epoch {loop.saved_epoch}) is in {loop.ckpt}: run the same "
                "command with --resume to continue"
            )
        else:
            said = f"no checkpoint was due yet ({CHECKPOINT_SECONDS:g} s); run the command again"
        click.echo(f"\ninterrupted; {said}", err=True)
        sys.exit(130)
    bar.close()
    if loop.saved_epoch != len(history):
        loop.checkpoint(history)
    return loop.stopping.reason(len(history), loop.max_epochs, loop.forced)


def keep_best(loop: Loop, keep: str, last: int) -> int:
    """The epoch whose weights the model keeps: the lowest validation loss's (loaded into the
    model) unless `keep` is 'last' or there is no validation split, else `last`."""
    if keep == "best" and loop.stopping.monitor == "val_loss" and loop.best_state is not None:
        loop.model.load_state_dict(loop.best_state)
        return loop.stopping.best_epoch
    return last
