"""The README's torchtitan recipe under tensor parallelism: a ColwiseParallel lm_head gives
Shard(-1) DTensor logits to torchtitan's ChunkedLossWrapper, whose loss is the recipe's
CrossentLoss. Registered only where torchtitan is importable (see test_torchtitan_recipe.py)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import torch
from cases import case, close, gen, targets

import crossent


def _recipe() -> dict:
    text = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("**torchtitan 0.3 recipe**"):]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)
    return namespace


def torchtitan_recipe_tensor_parallel(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
    from torchtitan.components.loss import ChunkedLossWrapper

    ns = _recipe()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    g = gen(3000)
    b, seq, d, v = 2, 8, 6, 11
    hidden = torch.randn(b, seq, d, generator=g, dtype=torch.float64)
    labels = targets(g, (b, seq), v)
    full = torch.nn.Linear(d, v, bias=False).double()
    with torch.no_grad():
        full.weight.copy_(torch.randn(v, d, generator=g, dtype=torch.float64))
    h_ref = hidden.reshape(-1, d).clone().requires_grad_()
    w_ref = full.weight.detach().clone().requires_grad_()
    ref = crossent.linear_cross_entropy(h_ref, w_ref, labels.reshape(-1), label_smoothing=0.1, z_loss=0.01)
    ref.backward()
    lm_head = parallelize_module(full, mesh, ColwiseParallel(use_local_output=False))
    config = ChunkedLossWrapper.Config(num_chunks=2, loss_fn=ns["CrossentLoss"].Config(label_smoothing=0.1, z_loss=0.01))
    wrapper = config.build()
    wrapper.set_lm_head(lm_head)
    h = hidden.clone().requires_grad_()
    loss, _ = wrapper(h, labels, global_valid_tokens=(labels != -100).sum())
    loss.backward()
    close(loss, ref, "loss")
    # torchtitan accumulates the chunks' hidden gradients in float32 (GradAccumulator dtype)
    close(h.grad.reshape(-1, d), h_ref.grad, "hidden grad", atol=1e-7, rtol=1e-6)
    assert isinstance(lm_head.weight.grad, DTensor)
    close(lm_head.weight.grad.full_tensor(), w_ref.grad, "lm_head grad")


if importlib.util.find_spec("torchtitan") is not None:
    case(2)(torchtitan_recipe_tensor_parallel)
