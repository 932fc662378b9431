"""The README's torchtitan 0.3 recipe, executed from the README itself: CrossentLoss inside
torchtitan's ChunkedLossWrapper gives torchtitan's own CrossEntropyLoss's loss and gradients, and
with label smoothing crossent.linear_cross_entropy's. Skipped where torchtitan is not importable
(it is no dependency of crossent; its pins would downgrade transformers' stack in this venv, so it
was run with the 0.3.0 wheel unpacked on PYTHONPATH: see the README)."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

pytest.importorskip("torchtitan.components.loss")

import crossent  # noqa: E402

README = pathlib.Path(__file__).parents[2] / "README.md"


def _recipe() -> dict:
    text = README.read_text()
    section = text[text.index("**torchtitan 0.3 recipe**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (torchtitan recipe)", "exec"), namespace)
    return namespace


def _run(config, lm_head, hidden, labels, count):
    wrapper = config.build()
    wrapper.set_lm_head(lm_head)
    h = hidden.clone().requires_grad_()
    lm_head.zero_grad()
    loss, _ = wrapper(h, labels, global_valid_tokens=count)
    loss.backward()
    return loss.detach(), h.grad, lm_head.weight.grad.clone()


def test_readme_recipe_in_chunked_loss_wrapper_equals_torchtitan_and_crossent():
    ns = _recipe()
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss

    CrossentLoss = ns["CrossentLoss"]
    torch.manual_seed(0)
    b, seq, d, v = 2, 8, 6, 11
    lm_head = torch.nn.Linear(d, v, bias=False)
    hidden = torch.randn(b, seq, d)
    labels = torch.randint(0, v, (b, seq))
    labels[0, :3] = -100
    count = (labels != -100).sum()
    ours = _run(ChunkedLossWrapper.Config(num_chunks=2, loss_fn=CrossentLoss.Config()), lm_head, hidden,
                labels, count)
    theirs = _run(ChunkedLossWrapper.Config(num_chunks=2, loss_fn=CrossEntropyLoss.Config()), lm_head,
                  hidden, labels, count)
    for a, t in zip(ours, theirs):
        torch.testing.assert_close(a, t, atol=1e-6, rtol=1e-5)
    smooth = _run(ChunkedLossWrapper.Config(num_chunks=2, loss_fn=CrossentLoss.Config(label_smoothing=0.1)),
                  lm_head, hidden, labels, count)
    h = hidden.reshape(-1, d).clone().requires_grad_()
    w = lm_head.weight.detach().clone().requires_grad_()
    ref = crossent.linear_cross_entropy(h, w, labels.reshape(-1), label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(smooth[0], ref.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(smooth[1].reshape(-1, d), h.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(smooth[2], w.grad, atol=1e-6, rtol=1e-5)
