"""Who holds what: this rank's slice of the vocabulary, the groups the collectives run over, and
DTensor inputs unpacked into local tensors plus that layout.

Vocabulary layout. Rank r of W holds the classes [start, stop) of C, contiguous, in rank order.
The default is torch.chunk's and DTensor Shard's: ceil(C / W) classes per rank, the last ones
fewer or none (C = 10 over 4 ranks: 3, 3, 3, 1; C = 5 over 4: 2, 2, 1, 0).
C comes from ``num_classes``, else from the full class weight, else from the ranks' local sizes
(one all_gather of W integers: pass num_classes to skip it; the offsets are then the prefix sums
of the sizes, which is the default layout whenever the shards are ceil-div shards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .. import _torch_version
from .._checks import distributed as _dchecks


@dataclass(frozen=True)
class Vocab:
    """This rank's classes [start, stop) of num_classes."""

    start: int
    stop: int
    num_classes: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Comm:
    """The collectives' groups: ``tp`` shares the vocabulary (the two statistic all-reduces);
    ``dp`` (DTensor inputs sharded on the batch dim) hold distinct samples, over which a scalar
    loss's sum and 'mean' denominator are summed. ``deterministic``: sums in rank order."""

    tp: dist.ProcessGroup
    dp: tuple = field(default=())
    deterministic: bool = False


def ceil_div_range(num_classes: int, world: int, rank: int) -> tuple[int, int]:
    """torch.chunk(C classes, W)'s slice of rank r (empty past the last chunk)."""
    per = -(-num_classes // world) if world else 0
    start = min(rank * per, num_classes)
    return start, min(start + per, num_classes)


def resolve_vocab(fn: str, group, local_size: int, vocab_range, num_classes, weight) -> Vocab:
    """This rank's Vocab from the caller's arguments (see the module docstring)."""
    num_classes = _dchecks.num_classes(fn, num_classes)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if num_classes is None and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        num_classes = weight.shape[0]  # (checked against the classes later, with the weight)
    if num_classes is None:
        sizes = all_gather_ints(local_size, group) if world > 1 else [local_size]
        num_classes = sum(sizes)
        if vocab_range is None:
            start = sum(sizes[:rank])
            return Vocab(start, start + local_size, num_classes)
    if vocab_range is not None:
        start, stop = _dchecks.vocab_range(fn, vocab_range, local_size, num_classes)
        return Vocab(start, stop, num_classes)
    start, stop = ceil_div_range(num_classes, world, rank)
    _dchecks.default_layout(fn, local_size, stop - start, rank, world, num_classes)
    return Vocab(start, stop, num_classes)


def all_gather_ints(value: int, group) -> list[int]:
    device = _group_device(group)
    t = torch.tensor([value], dtype=torch.int64, device=device)
    return [int(v) for v in _wait(_torch_version.all_gather_single(t, 0, group)).tolist()]


def all_gather_int_rows(values: list[int], group) -> list[list[int]]:
    """Every rank's few integers, in rank order (one all_gather of W x len(values) numbers)."""
    t = torch.tensor(values, dtype=torch.int64, device=_group_device(group)).reshape(1, -1)
    out = _wait(_torch_version.all_gather_single(t, 0, group))
    return [[int(v) for v in row] for row in out.reshape(-1, len(values)).tolist()]


def _group_device(group) -> torch.device:
    """The device a group's collectives take tensors on (gloo: CPU; nccl: this rank's GPU)."""
    backend = dist.get_backend(group)
    if backend in ("gloo", "fake") or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _wait(t: torch.Tensor) -> torch.Tensor:
    return t.wait() if isinstance(t, funcol.AsyncCollectiveTensor) else t


@dataclass(frozen=True)
class DTensorCall:
    """A DTensor input unpacked: its mesh and placements, the Comm, and this rank's Vocab."""

    mesh: object
    placements: tuple
    comm: Comm
    vocab: Vocab
    dp_dims: tuple

    def output_placements(self, reduction: str, ndim: int) -> tuple:
        """'none': the batch stays sharded where the input's was (Shard(0)), the rest Replicate;
        a scalar loss is the global one on every rank (Replicate)."""
        from torch.distributed.tensor import Replicate, Shard

        return tuple(
            Shard(0) if reduction == "none" and ndim > 0 and i in self.dp_dims else Replicate()
            for i in range(len(self.placements))
        )


def unpack_dtensor(fn: str, input, class_dim: int, deterministic: bool) -> DTensorCall:
    """Mesh dims: exactly one shards the class dim (the vocab-parallel group), others Shard(0)
    (distinct samples) or Replicate. The class range is DTensor's own (ceil-div)."""
    tp_dim, dp_dims = _dchecks.dtensor_placements(fn, input, class_dim)
    mesh = input.device_mesh
    num_classes = input.shape[class_dim]
    world = mesh.size(tp_dim)
    coord = mesh.get_local_rank(tp_dim)
    start, stop = ceil_div_range(num_classes, world, coord)
    local = input._local_tensor.shape[class_dim]
    _dchecks.default_layout(fn, local, stop - start, coord, world, num_classes)
    comm = Comm(mesh.get_group(tp_dim), tuple(mesh.get_group(d) for d in dp_dims), deterministic)
    return DTensorCall(mesh, tuple(input.placements), comm, Vocab(start, stop, num_classes), tuple(dp_dims))


def local_companion(fn: str, name: str, t, call: DTensorCall, like_input: bool):
    """A target or class weight next to a DTensor input: its local tensor. A DTensor must be
    placed as the input (probabilities), or as the input with the class dim replicated (class
    indices); a class weight replicated everywhere. Plain tensors are taken as this rank's part."""
    if t is None or not _dchecks.is_dtensor(t):
        return t
    from torch.distributed.tensor import Replicate

    if like_input:
        expected = call.placements
    elif name == "weight":
        expected = tuple(Replicate() for _ in call.placements)
    else:
        expected = call.output_placements("none", t.dim())
    return _dchecks.dtensor_companion(fn, name, t, expected, call.placements)
