"""global_normalizer: the 'mean' denominator of a data-parallel step, summed over the ranks that
hold distinct tokens, as a device tensor for ``normalizer=``.

Why. A 'mean' loss divides by the number of counted tokens. With data parallelism (DP), context
parallelism (CP, a sequence split over ranks) and gradient accumulation, each rank sees only its
part of the step's tokens, and neither the local count nor averaging the ranks' means gives the
step's mean when the counts differ (padding, ignored prompt tokens). The exact loss is

    loss_rank = (sum of this rank's per-token losses in this micro-batch) / (global count of the step)

whose gradients, *summed* over ranks and micro-batches, are the gradient of the step's mean.
Count once per optimizer step, over all its micro-batches, before the forward passes.

Which group. The ranks that hold distinct tokens: DP x CP when counting after the CP split, DP
when counting before it (then each CP rank holds the same targets); never the tensor/vocab-
parallel group, whose ranks share the same tokens (counting over it multiplies the count by the
TP size: TRL issue 7100).

The gradient reducer must then sum, not average:
    FSDP2     ``model.set_gradient_divide_factor(1.0)`` on every fully_shard-ed module (its
              default divides by the DP size); torchtitan does this (distributed/fsdp.py). A
              torch without that method (2.6: only an NCCL-only reduce-scatter factor) always
              averages: multiply the loss by the DP world size, as for DDP.
    DDP       always averages over its group: multiply the loss by the DP world size
              (``loss * dist.get_world_size(dp_group)``), as transformers' Trainer does with
              ``average_tokens_across_devices``; or register a comm hook that sums.
    DeepSpeed averages too (ZeRO-1/2/3): multiply by the DP world size likewise.
    Megatron  ``calculate_per_token_loss=True`` and return the local sum with the local count;
              ``finalize_model_grads`` does this division itself.
Gradient accumulation: pass every micro-batch's target (a list) and call backward on each
micro-batch's loss as usual; the accumulated gradient is the step's mean's. Do not divide by the
number of micro-batches.
"""

from __future__ import annotations

import torch

from .._checks import distributed as _dchecks
from . import _comm

_FN = "global_normalizer"


def _count(target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None, dtype) -> torch.Tensor:
    """This rank's count: counted class indices (or their summed class weights); for probability
    targets (floating, class dim 1) the number of samples, as 'mean' divides by for them."""
    if target.is_floating_point():
        samples = target.numel() // target.shape[1] if target.dim() > 1 else 1
        return torch.tensor(float(samples), dtype=dtype, device=target.device)
    valid = target != ignore_index
    if weight is None:
        return valid.sum().to(dtype)
    w_t = weight.to(dtype)[torch.where(valid, target.long(), 0)]
    return torch.where(valid, w_t, 0.0).sum()


def global_normalizer(target, ignore_index: int = -100, *, group, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The step's count of counted targets (or their summed class weights w[t]) over ``group``.

    Args:
        target: this rank's targets -- one tensor or a list of them (the micro-batches of one
            optimizer step): class indices of any shape, or class probabilities (floating, class
            dim 1: each sample counts 1). A DTensor counts its local part.
        ignore_index: targets equal to it are not counted.
        group: the ranks that hold distinct tokens (ProcessGroup or DeviceMesh: DP, or DP x CP;
            never TP); keyword, required. None: the mesh dims a DTensor target is sharded on (its
            Replicate dims, e.g. TP, hold copies), else the default group.
        weight: the full class weight (C,), for the weighted 'mean' (sum of w[t]).

    Returns a 0-d float64 tensor (float32 on MPS) on the targets' device, exact for counts up to
    2^53, without a host sync: pass it as ``normalizer=`` to crossent.linear_cross_entropy,
    crossent.distributed's losses or their modules (reduction 'mean'), or divide a 'sum' by it.
    Runs one all_reduce SUM of one number; not differentiable (a count).
    """
    targets = _dchecks.normalizer_targets(_FN, target)
    targets = [_dchecks.normalizer_target(_FN, t) for t in targets]
    groups = _groups(group) if group is not None or not _dchecks.is_dtensor(targets[0]) else _sharded(targets[0])
    targets = [t.to_local() if _dchecks.is_dtensor(t) else t for t in targets]
    device = targets[0].device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    if weight is not None and _dchecks.is_dtensor(weight):
        weight = weight.to_local()
    with torch.no_grad():
        total = sum(_count(t, ignore_index, weight, dtype) for t in targets)
        for g in groups:
            total = _comm.all_reduce_sum(total.reshape(1), g).reshape(())
    return total


def _groups(group) -> list:
    """A ProcessGroup, or every dim of a DeviceMesh (sums over all of them compose to the mesh)."""
    mesh_cls = getattr(getattr(torch.distributed, "device_mesh", None), "DeviceMesh", None)
    if mesh_cls is not None and isinstance(group, mesh_cls):
        return [group.get_group(d) for d in range(group.ndim)]
    return [_dchecks.group(_FN, group)]


def _sharded(target) -> list:
    """The groups of the mesh dims a DTensor target is sharded on: the ranks with distinct tokens."""
    mesh = target.device_mesh
    return [mesh.get_group(d) for d, p in enumerate(target.placements) if p.is_shard()]
