"""The collectives, as functional collectives (``torch.distributed._functional_collectives``: they
trace under torch.compile and CommDebugMode counts them), always called outside autograd.

Why never through autograd: the statistics (row max, sums of exponentials, target logits) are the
same on every rank after the all-reduce, so a differentiable all-reduce would send each rank's
gradient of them back through a SUM in backward and every rank would receive W copies -- a
gradient W times too large (checked with funcol / ``torch.distributed.nn``). The losses' autograd
Functions call these helpers inside ``forward`` and write the exact local gradients themselves.

A group of one rank runs no collective. ``deterministic=True`` replaces a SUM by an all_gather and
a sum in rank order (W times the payload): the result is then independent of the backend's
reduction algorithm (NCCL's order depends on message size and algorithm, NVLS varies between calls).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .. import _torch_version


def _wait(t: torch.Tensor) -> torch.Tensor:
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


def size(group) -> int:
    return dist.get_world_size(group)


def all_reduce_max(t: torch.Tensor, group) -> torch.Tensor:
    """Elementwise max over the group: exact, so deterministic on every backend."""
    if size(group) == 1:
        return t
    return _wait(funcol.all_reduce(t.contiguous(), "max", group))


def all_reduce_sum(t: torch.Tensor, group, deterministic: bool = False) -> torch.Tensor:
    """Elementwise sum over the group (in rank order with ``deterministic``)."""
    world = size(group)
    if world == 1:
        return t
    if not deterministic:
        return _wait(funcol.all_reduce(t.contiguous(), "sum", group))
    parts = gather(t, group)  # (W, *t.shape)
    total = parts[0].clone()
    for r in range(1, world):
        total += parts[r]
    return total


def gather(t: torch.Tensor, group) -> torch.Tensor:
    """(W, *t.shape): every rank's t, in rank order."""
    world = size(group)
    out = _wait(_torch_version.all_gather_single(t.contiguous().reshape(1, -1), 0, group))
    return out.reshape(world, *t.shape)


def gather_rows(t: torch.Tensor, group) -> torch.Tensor:
    """The ranks' (n, ...) tensors concatenated along dim 0 in rank order (sequence parallelism)."""
    if size(group) == 1:
        return t
    return _wait(_torch_version.all_gather_single(t.contiguous(), 0, group))


def reduce_scatter_rows(t: torch.Tensor, group, deterministic: bool = False) -> torch.Tensor:
    """Sum over the group of (W n, ...) tensors, rank r keeping rows [r n, (r + 1) n)."""
    world = size(group)
    if world == 1:
        return t
    if deterministic:
        n = t.shape[0] // world
        rank = dist.get_rank(group)
        return all_reduce_sum(t, group, True)[rank * n:(rank + 1) * n]
    return _wait(_torch_version.reduce_scatter_single(t.contiguous(), "sum", 0, group))
