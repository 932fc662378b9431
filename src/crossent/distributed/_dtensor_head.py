"""A DTensor output layer handed to vocab_parallel_linear_log_probs or
vocab_parallel_linear_cross_entropy: unpacked into this rank's rows, the vocab-parallel group and
the class range, and the outputs wrapped back.

How a DTensor stack hands the head (torch.distributed.tensor.parallel.ColwiseParallel on
``lm_head``, as torchtitan's loss-parallel plan): ``lm_head.weight`` is a DTensor Shard(0) on the
TP mesh dim (the vocabulary rows; DTensor's layout is torch.chunk's: ceil(V / W) rows per rank,
empty trailing shards), Replicate on any other mesh dim; its bias likewise. The hidden states are
a plain tensor or a DTensor Replicate on the TP dim (Shard(k) on a leading dim of another mesh dim:
distinct sequences there). The call then runs on the local tensors: ``weight.to_local()`` is
differentiable, so grad_W_r reaches the parameter's ``.grad`` as a DTensor: Shard(0) on the TP dim,
Partial on a mesh dim where the input holds distinct tokens (the sum over them is pending),
Replicate elsewhere. A plain input is taken as the same tokens on every rank of the mesh.
Outputs: plain tensors for a plain input, DTensors placed as the input for a DTensor input.

Not this: an FSDP2 weight outside its module's forward is also Shard(0), but over the
data-parallel ranks, which hold distinct tokens; that layout cannot be told from a TP shard by the
tensor alone, so a weight sharded on dim 0 by two mesh dims (FSDP2 on TP) is refused, and the
contract "input and target the same on every rank of the weight's shard dim" is the caller's,
exactly as for plain shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import distributed as _dchecks
from . import _layout


@dataclass(frozen=True)
class Unpacked:
    """The local operands and the layout the plain-tensor call takes."""

    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    target: torch.Tensor
    group: object
    vocab_range: tuple[int, int]
    num_classes: int
    out_mesh: object = None  # the input's mesh and placements when it is a DTensor
    out_placements: tuple | None = None

    def wrap(self, out: torch.Tensor, shape) -> torch.Tensor:
        """A per-token output: placed as the input's tokens for a DTensor input, else plain."""
        if self.out_placements is None:
            return out
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(out, self.out_mesh, self.out_placements, run_check=False,
                                  shape=torch.Size(shape), stride=_contiguous_stride(shape))

    def wrap_scalar(self, out: torch.Tensor) -> torch.Tensor:
        """A scalar already reduced over every token (`data_groups` included): Replicate
        everywhere for a DTensor input, else plain."""
        if self.out_placements is None:
            return out
        from torch.distributed.tensor import DTensor, Replicate

        return DTensor.from_local(out, self.out_mesh, [Replicate()] * len(self.out_placements), run_check=False,
                                  shape=torch.Size(()), stride=())

    def data_groups(self) -> tuple:
        """The groups of the mesh dims whose ranks hold distinct tokens (a DTensor input sharded
        there): a scalar loss's sum and count are summed over them."""
        if self.out_placements is None:
            return ()
        from torch.distributed.tensor import Shard

        return tuple(self.out_mesh.get_group(i) for i, p in enumerate(self.out_placements) if type(p) is Shard)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for s in reversed(tuple(shape)):
        stride.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(stride))


def unpack(fn, input, weight, bias, target, group, vocab_range, num_classes, *,
           input_grad_partial: bool = False) -> Unpacked:
    """Check the DTensor operands against each other and the caller's group / layout arguments;
    their local tensors and the vocab-parallel group (the weight's Shard(0) mesh dim).
    input_grad_partial: the call returns this rank's partial sum of grad_x over its classes (the
    linear loss's reduce_input_grad=False): a DTensor input's gradient is then Partial on the
    weight's shard dim (DTensor sums it when it is redistributed), not taken as the full one."""
    _dchecks.dtensor_weight_only_with_bias(fn, weight, bias)
    mesh, dim = weight.device_mesh, _dchecks.dtensor_head_dim(fn, weight)
    if bias is not None and _dchecks.is_dtensor(bias):
        _dchecks.dtensor_bias_like_weight(fn, bias, weight)
    tp = mesh.get_group(dim)
    if group is not None:
        _dchecks.dtensor_group_matches(fn, _dchecks.group(fn, group), tp, dim)
    total, world, coord = weight.shape[0], mesh.size(dim), mesh.get_local_rank(dim)
    start, stop = _layout.ceil_div_range(total, world, coord)
    _dchecks.dtensor_layout_matches(fn, vocab_range, num_classes, (start, stop), total)
    out_mesh = out_placements = None
    if _dchecks.is_dtensor(input):
        out_placements = _dchecks.dtensor_head_input(fn, input, mesh, dim)
        out_mesh = mesh
        if _dchecks.is_dtensor(target):
            target = _dchecks.dtensor_companion(fn, "target", target, out_placements, input.placements)
    elif _dchecks.is_dtensor(target):
        target = target.to_local() if _dchecks.dtensor_replicated(fn, "target", target) else target
    grads = _param_grad_placements(weight, input, dim)
    if bias is not None and _dchecks.is_dtensor(bias):
        bias = bias.to_local(grad_placements=grads)
    weight = weight.to_local(grad_placements=grads)
    if out_placements is not None:
        input = input.to_local(grad_placements=_input_grad_placements(input, dim) if input_grad_partial else None)
    return Unpacked(input, weight, bias, target, tp, (start, stop), total, out_mesh, out_placements)


def _param_grad_placements(weight, input, dim: int) -> tuple:
    """The placements of this rank's grad_W_r: Shard(0) on the vocab dim; Partial on a mesh dim
    whose ranks hold distinct tokens (an input sharded there: each rank's sum covers its own
    tokens, the gradient is their sum), else Replicate (the same tokens: the same gradient)."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    sharded = [type(p) is Shard for p in input.placements] if _dchecks.is_dtensor(input) else []
    return tuple(Shard(0) if i == dim else Partial() if i < len(sharded) and sharded[i] else Replicate()
                 for i in range(len(weight.placements)))


def _input_grad_placements(input, dim: int) -> tuple:
    """A DTensor input's gradient when each rank returns its partial sum over its classes: Partial
    on the weight's shard dim, the input's own placement on the others."""
    from torch.distributed.tensor import Partial

    return tuple(Partial() if i == dim else p for i, p in enumerate(input.placements))


@dataclass(frozen=True)
class UnpackedPair:
    """Two DTensor heads on the same layout (vocab_parallel_linear_distillation_loss): the student's
    `Unpacked` (output wrapping, group, layout) and the teacher's local operands."""

    student: Unpacked
    teacher_input: torch.Tensor
    teacher_weight: torch.Tensor
    teacher_bias: torch.Tensor | None

    def __getattr__(self, name):  # input, weight, bias, target, group, vocab_range, num_classes, wrap
        return getattr(self.student, name)


def unpack_pair(fn, input, weight, bias, teacher_input, teacher_weight, teacher_bias, target, group, vocab_range,
                num_classes, reduction) -> UnpackedPair:
    """Both heads DTensors Shard(0) on the same mesh dim with the same rows (then the same classes per
    rank); each checked as `unpack` checks one. A DTensor input with a batch dim sharded (distinct tokens
    per rank) is for reduction 'none' only: a scalar 'mean' / 'sum' would be each rank's own."""
    for name, t in (("linear_weight", weight), ("teacher_linear_weight", teacher_weight)):
        if not _dchecks.is_dtensor(t):
            _dchecks.dtensor_pair(fn, name, t)
    student = unpack(fn, input, weight, bias, target, group, vocab_range, num_classes)
    teacher = unpack(fn, teacher_input, teacher_weight, teacher_bias, None, group, vocab_range, num_classes)
    if teacher.vocab_range != student.vocab_range or teacher.num_classes != student.num_classes or \
            teacher_weight.device_mesh != weight.device_mesh or \
            _dchecks.dtensor_head_dim(fn, teacher_weight) != _dchecks.dtensor_head_dim(fn, weight):
        _dchecks.dtensor_pair_layout(fn, weight, teacher_weight)
    if student.out_placements is not None and reduction != "none":
        from torch.distributed.tensor import Replicate

        if any(type(p) is not Replicate for p in student.out_placements):
            _dchecks.dtensor_scalar_of_sharded_tokens(fn, input, reduction)
    return UnpackedPair(student, teacher.input, teacher.weight, teacher.bias)
