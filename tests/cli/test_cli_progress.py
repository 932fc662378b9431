"""The training progress bar: on a terminal it moves with every batch; in a pipe or log, none."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from crossent.cli import models, stopping, training


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(tmp_path, quiet: bool = False) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, generator=gen), torch.randint(0, 3, (96,), generator=gen)
    model = models.build(models.architecture("linear", 3, 3, "multiclass", []))
    loop = training.Loop(
        model=model,
        opt=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=models.make_loss("multiclass", None, 0.0),
        rng=torch.Generator().manual_seed(0),
        scheduler=None,
        stopping=stopping.EarlyStopping(None, "train_loss"),
        train=(x, y),
        val=(x[:0], y[:0]),
        task="multiclass",
        batch_size=32,
        max_epochs=4,
        forced=True,
        ckpt=tmp_path / "checkpoint.safetensors",
        run={},
        quiet=quiet,
    )
    training.run_epochs(loop, 0, [])


@pytest.mark.parametrize("tty", [True, False])
def test_bar_on_a_terminal_only(tmp_path, monkeypatch, capsys, tty):
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    _train(tmp_path)
    text = err.getvalue()
    if tty:
        # 4 epochs x 3 batches: the bar counts batches and names the epoch
        assert "epoch 4/4" in text and "12/12" in text and "batch" in text
    else:
        assert text == ""


def test_quiet_has_no_bar_even_on_a_terminal(tmp_path, monkeypatch):
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    _train(tmp_path, quiet=True)
    assert err.getvalue() == ""
