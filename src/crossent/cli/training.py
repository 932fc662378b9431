"""The training loop of `crossent train`: the optimizer, and the epochs with a checkpoint after each.

Each epoch visits the training rows in mini-batches, in an order drawn from `rng` alone, then
scores the validation rows. Since the checkpoint holds the model, the optimizer state and `rng`'s
state, a run resumed from epoch k draws the same batches and takes the same steps as one never
stopped (tests/cli check the final weights are equal).

torch and tqdm are imported inside the functions: `crossent train --help` imports this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

OPTIMIZERS = ("adam", "adamw", "sgd")


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


def run_epochs(
    *,
    model: Any,
    opt: Any,
    loss_fn: Any,
    rng: Any,
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    task: str,
    batch_size: int,
    start: int,
    epochs: int,
    history: list[dict[str, Any]],
    ckpt: Path,
    run: dict[str, Any],
    quiet: bool,
    stop_after_epochs: int | None,
) -> bool:
    """Train epochs start+1 .. epochs; True when all ran, False when stopped by stop_after_epochs.

    `train` and `val` are (x (N, D) float32, y (N,) class indices); `val` may have no rows. Each
    epoch appends {epoch, train_loss, val_loss, val_accuracy} to `history` (which holds the epochs
    before `start`) and rewrites `ckpt` with the model, `opt`, `rng` and {epoch, history, run}.
    Unless `quiet`, a progress bar over the batches (on a terminal only) and a line every tenth
    of the run. Ctrl-C ends
    the process with exit code 130 after saying where the last checkpoint is.
    """
    import torch
    from tqdm.auto import tqdm

    from . import store

    x_tr, y_tr = train
    x_va, y_va = val
    n = len(y_tr)
    batches = -(-n // batch_size)  # per epoch
    # one bar over every batch of the run, so a long epoch moves it too; `disable=None` is tqdm's
    # own test: no bar when stderr is not a terminal (a log file, a pipe, CI)
    bar = tqdm(
        total=epochs * batches,
        initial=start * batches,
        desc=f"epoch {start + 1}/{epochs}",
        unit="batch",
        disable=True if quiet else None,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    report_every = max(1, epochs // 10)
    try:
        for epoch in range(start, epochs):
            bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
            model.train()
            order = torch.randperm(n, generator=rng)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                opt.zero_grad()
                loss = loss_fn(model(x_tr[idx]), y_tr[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                bar.update()
            entry: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": total / n,
                "val_loss": None,
                "val_accuracy": None,
            }
            if len(y_va):
                model.eval()
                with torch.no_grad():
                    logits = model(x_va)
                    entry["val_loss"] = loss_fn(logits, y_va).item()
                    pred = (logits[:, 0] > 0).long() if task == "binary" else logits.argmax(1)
                    entry["val_accuracy"] = (pred == y_va).double().mean().item()
            history.append(entry)
            store.save_checkpoint(
                ckpt, model, opt, rng, {"epoch": epoch + 1, "history": history, "run": run}
            )
            bar.set_postfix(loss=f"{entry['train_loss']:.4f}")
            if not quiet and (epoch + 1) % report_every == 0 and epoch + 1 < epochs:
                # a line every tenth of the run; tqdm.write keeps a live bar below the lines
                (click.echo if bar.disable else bar.write)(progress_line(entry, epochs))
            if (
                stop_after_epochs is not None
                and epoch + 1 == stop_after_epochs
                and epoch + 1 < epochs
            ):
                bar.close()
                click.echo(
                    f"stopped after epoch {epoch + 1} as asked; the checkpoint is in {ckpt}, "
                    "rerun with --resume to finish"
                )
                return False
    except KeyboardInterrupt:
        bar.close()
        done = history[-1]["epoch"] if history else start
        click.echo(
            f"\ninterrupted; the last checkpoint (epoch {done}) is in {ckpt}: run the same "
            "command with --resume to continue",
            err=True,
        )
        sys.exit(130)
    bar.close()
    return True
