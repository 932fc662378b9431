"""Checks of crossent.distributed: process groups, vocabulary layouts, DTensor placements, sharded
parameters, and the options only the vocab-parallel losses have. Same message pattern as the rest
of `_checks`: ``"<function>: <argument> <what is wrong>, got <value>"``."""

from __future__ import annotations

import torch

from . import targets
from ._common import InvalidArgument, InvalidArgumentType, _tensor, count, flag, torch_int


def is_dtensor(t: object) -> bool:
    """Whether t is a torch.distributed.tensor.DTensor (without importing it when unused)."""
    cls = type(t)
    return isinstance(t, torch.Tensor) and cls.__name__ == "DTensor" and "distributed" in cls.__module__


def _is_zero_partitioned(t: torch.Tensor) -> bool:
    # DeepSpeed ZeRO-3 tags its parameters (deepspeed/runtime/zero/partition_parameters.py); inside
    # its module's forward a parameter is gathered (ds_status AVAILABLE), outside it is not.
    if not (hasattr(t, "ds_id") and hasattr(t, "ds_status")):
        return False
    status = getattr(t.ds_status, "name", str(t.ds_status))
    return status != "AVAILABLE" or t.numel() == 0


def plain_parameter(fn: str, name: str, t: object) -> None:
    """A functional loss needs this rank's rows as a plain tensor. FSDP2 parameters are DTensors
    outside their module's forward, and autograd never reaches their sharded ``.grad`` through a
    functional call (checked: it stays None, even after ``unshard()``); a ZeRO-3 parameter outside
    its module's forward is an empty placeholder (numel 0)."""
    if t is None:
        return
    if is_dtensor(t):
        raise InvalidArgumentType(
            f"{fn}: {name} is a DTensor (an FSDP2 or DTensor-parallel parameter, placements "
            f"{tuple(t.placements)}); a functional loss called on it outside its module's forward "
            f"leaves the sharded .grad None. Let a module own the weight: "
            f"crossent.distributed.VocabParallelLinearCrossEntropyLoss (fully_shard it as any "
            f"layer), or pass this rank's vocabulary rows as a plain tensor"
        )
    if isinstance(t, torch.Tensor) and _is_zero_partitioned(t):
        raise InvalidArgumentType(
            f"{fn}: {name} is a DeepSpeed ZeRO-3 partitioned parameter (shape "
            f"{tuple(getattr(t, 'ds_shape', t.shape))}, local numel {t.numel()}); outside its "
            f"module's forward it holds no data. Let a module own the weight "
            f"(crossent.distributed.VocabParallelLinearCrossEntropyLoss), or gather it with "
            f"deepspeed.zero.GatheredParameters"
        )


def group(fn: str, group: object):
    """None (the default process group), a ProcessGroup, or a 1-D DeviceMesh -> a ProcessGroup."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgument(
            f"{fn}: torch.distributed is not initialized; call "
            f"torch.distributed.init_process_group(...) first (gloo on CPU, nccl on GPUs)"
        )
    if group is None:
        return dist.group.WORLD
    if isinstance(group, dist.ProcessGroup):
        return group
    mesh_cls = getattr(getattr(dist, "device_mesh", None), "DeviceMesh", None)
    if mesh_cls is not None and isinstance(group, mesh_cls):
        if group.ndim != 1:
            raise InvalidArgument(
                f"{fn}: group must be a ProcessGroup or a 1-D DeviceMesh, got a {group.ndim}-D "
                f"mesh {tuple(group.mesh_dim_names or ())}; pass mesh['<dim name>']"
            )
        return group.get_group()
    raise InvalidArgumentType(
        f"{fn}: group must be a torch.distributed ProcessGroup, a 1-D DeviceMesh or None, got "
        f"{type(group).__name__}"
    )


def num_classes(fn: str, value: object) -> int | None:
    return count(fn, "num_classes", value, minimum=0)


def vocab_range(fn: str, value: object, local_size: int, num_classes: int) -> tuple[int, int]:
    """An explicit (start, stop) of this rank's classes: inside [0, C), as many as its columns."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise InvalidArgumentType(f"{fn}: vocab_range must be a pair of ints (start, stop), got {value!r}")
    start, stop = value
    if not 0 <= start <= stop <= num_classes or stop - start != local_size:
        raise InvalidArgument(
            f"{fn}: vocab_range must satisfy 0 <= start <= stop <= num_classes={num_classes} with "
            f"stop - start = this rank's {local_size} classes, got {tuple(value)}"
        )
    return start, stop


def default_layout(fn: str, local_size: int, expected: int, rank: int, world: int, num_classes: int) -> None:
    """Without vocab_range the layout is torch.chunk's / DTensor's: ceil(C / W) classes per rank."""
    if local_size != expected:
        raise InvalidArgument(
            f"{fn}: rank {rank} of {world} holds {local_size} classes, but the default layout "
            f"(torch.chunk / DTensor Shard: ceil({num_classes} / {world}) per rank, empty trailing "
            f"shards allowed) gives it {expected}; pass vocab_range=(start, stop) for another layout"
        )


def dtensor_placements(fn: str, t: torch.Tensor, class_dim: int) -> tuple[int, list[int]]:
    """The mesh dim that shards the class dim, and the mesh dims that shard the batch (dim 0)."""
    from torch.distributed.tensor import Replicate, Shard

    tp, dp = [], []
    for i, p in enumerate(t.placements):
        if type(p) is Shard and p.dim % t.dim() == class_dim:
            tp.append(i)
        elif type(p) is Shard and p.dim % t.dim() == 0 and class_dim != 0:
            dp.append(i)
        elif type(p) is not Replicate:
            tp = None
            break
    if tp is None or len(tp) != 1:
        raise InvalidArgument(
            f"{fn}: a DTensor input must be sharded on its class dim ({class_dim}) by exactly one "
            f"mesh dim, the others Shard(0) (batch) or Replicate, got placements "
            f"{tuple(t.placements)}"
        )
    return tp[0], dp


def dtensor_companion(fn: str, name: str, t: torch.Tensor, expected: tuple, input_placements) -> torch.Tensor:
    """A DTensor target (or class weight) placed as it must be beside the input; its local tensor."""
    if tuple(t.device_mesh.mesh.shape) and tuple(t.placements) != tuple(expected):
        raise InvalidArgument(
            f"{fn}: {name} is a DTensor with placements {tuple(t.placements)}; beside an input "
            f"placed {tuple(input_placements)} it must be placed {tuple(expected)}"
        )
    return t.to_local()


def no_grad_through(fn: str, name: str, t: object) -> None:
    """Targets and class weights are constants of the vocab-parallel losses (as of the fused
    single-device ones): refuse one that asks for a gradient rather than silently return none."""
    if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
        raise InvalidArgument(
            f"{fn}: {name} requires grad, but the vocab-parallel losses do not differentiate "
            f"w.r.t. {name}; pass {name}.detach()"
        )


def sequence_parallel(fn: str, sequence_parallel: object, reduce_input_grad: object) -> None:
    flag(fn, "sequence_parallel", sequence_parallel)
    flag(fn, "reduce_input_grad", reduce_input_grad)
    if sequence_parallel and not reduce_input_grad:
        raise InvalidArgument(
            f"{fn}: sequence_parallel=True gathers the input here, so the reduce-scatter of its "
            f"gradient is this function's too; reduce_input_grad=False applies without sequence "
            f"parallelism only"
        )


def deterministic(fn: str, value: object) -> bool:
    return flag(fn, "deterministic", value)


def linear_targets(fn: str, rows: int, local_classes: int, out: tuple, num_classes: int, target: object,
                   ignore_index: int, device) -> tuple[torch.Tensor, bool]:
    """Global class indices (rows, *out), or this rank's probabilities (rows, V_r, *out) (torch's
    rule: floating and of the local logits' shape). Returns (int64 indices or probabilities, soft)."""
    ignore_index = torch_int(fn, "ignore_index", ignore_index)
    return targets.linear_targets(
        fn, target, batch=(rows,), classes=local_classes, out=out, num_classes=num_classes,
        ignore_index=ignore_index, ignore_given=ignore_index >= 0, device=device,
        context="(one per token; under sequence parallelism, per token of the gathered sequence)",
        probabilities_floating=False,
    )


def normalizer_target(fn: str, target: object) -> torch.Tensor:
    target = _tensor(fn, "target", target)
    if target.is_complex() or target.dtype == torch.bool:
        raise InvalidArgumentType(
            f"{fn}: target must hold class indices (an integer tensor) or class probabilities "
            f"(floating, class dim 1), got {target.dtype}"
        )
    return target


def normalizer_targets(fn: str, targets: object) -> list:
    if isinstance(targets, torch.Tensor):
        return [targets]
    if isinstance(targets, (list, tuple)) and targets:
        return list(targets)
    raise InvalidArgumentType(
        f"{fn}: target must be a tensor or a non-empty list of tensors (the micro-batches of one "
        f"optimizer step), got {type(targets).__name__}"
    )


def plain_input(fn: str, input: object) -> None:
    if is_dtensor(input):
        raise InvalidArgumentType(
            f"{fn}: input is a DTensor (placements {tuple(input.placements)}); pass this rank's "
            f"tokens as a plain tensor (input.to_local(), or full_tensor() for a sharded one)"
        )


def sequence_parallel_batched(fn: str, input: torch.Tensor) -> None:
    raise InvalidArgument(
        f"{fn}: sequence_parallel=True needs batched input (N/W, in_features), got shape "
        f"{tuple(input.shape)}"
    )


def no_second_derivative(fn: str) -> None:
    """backward(create_graph=True): the statistics come from collectives that are never
    differentiated, so there is no exact second derivative to give; say so instead of returning a
    gradient without a graph."""
    raise InvalidArgument(
        f"{fn}: second derivatives (create_graph=True) are not supported by the vocab-parallel "
        f"losses; gather the logits and use crossent.cross_entropy for higher-order gradients"
    )


def replicated(fn: str, name: str, t: object) -> object:
    """A full tensor given as a DTensor (a class weight): its local copy if replicated."""
    if not is_dtensor(t):
        return t
    if not all(p.is_replicate() for p in t.placements):
        raise InvalidArgument(
            f"{fn}: {name} is a DTensor placed {tuple(t.placements)}; it must hold every class on "
            f"every rank (Replicate), or be a plain tensor"
        )
    return t.to_local()


# ------------------------------------------------- DTensor output layers (vocab-parallel log-probs)

def _placements(t) -> tuple:
    return tuple(t.placements)


def dtensor_weight_only_with_bias(fn: str, weight: object, bias: object) -> None:
    if is_dtensor(bias) and not is_dtensor(weight):
        raise InvalidArgumentType(
            f"{fn}: linear_bias is a DTensor (placements {_placements(bias)}) but linear_weight is "
            f"not; pass both as DTensors placed alike, or both as this rank's rows (plain tensors)"
        )


def dtensor_head_dim(fn: str, weight: torch.Tensor) -> int:
    """The mesh dim that shards the weight's rows (the vocabulary): exactly one Shard(0), the other
    mesh dims Replicate."""
    from torch.distributed.tensor import Replicate, Shard

    rows = [i for i, p in enumerate(weight.placements) if type(p) is Shard and p.dim % max(weight.dim(), 1) == 0]
    others_ok = all(type(p) is Replicate for i, p in enumerate(weight.placements) if i not in rows)
    if len(rows) != 1 or not others_ok:
        raise InvalidArgument(
            f"{fn}: linear_weight is a DTensor placed {_placements(weight)} on a mesh of shape "
            f"{tuple(weight.device_mesh.shape)}; its rows (the vocabulary) must be sharded by exactly "
            f"one mesh dim (Shard(0), as ColwiseParallel places lm_head.weight), every other mesh "
            f"dim Replicate. An FSDP2-sharded weight (Shard(0) over data-parallel ranks, which hold "
            f"distinct tokens) is not a vocabulary shard: let a module own it "
            f"(crossent.distributed.VocabParallelLinearCrossEntropyLoss) or pass the vocab-parallel "
            f"rows as a plain tensor"
        )
    return rows[0]


def dtensor_bias_like_weight(fn: str, bias: torch.Tensor, weight: torch.Tensor) -> None:
    from torch.distributed.tensor import Replicate, Shard

    want = tuple(Shard(0) if type(p) is Shard else Replicate() for p in weight.placements)
    got = tuple(Shard(0) if type(p) is Shard and p.dim % max(bias.dim(), 1) == 0 else p for p in bias.placements)
    if bias.device_mesh != weight.device_mesh or got != want:
        raise InvalidArgument(
            f"{fn}: linear_bias is a DTensor placed {_placements(bias)}; beside linear_weight placed "
            f"{_placements(weight)} it must be placed {want} on the weight's mesh"
        )


def dtensor_group_matches(fn: str, given, shard_group, mesh_dim: int) -> None:
    import torch.distributed as dist

    mine, want = dist.get_process_group_ranks(given), dist.get_process_group_ranks(shard_group)
    if sorted(mine) != sorted(want):
        raise InvalidArgument(
            f"{fn}: group holds ranks {sorted(mine)}, but linear_weight (a DTensor) is sharded over "
            f"mesh dim {mesh_dim}, ranks {sorted(want)}; pass group=None (the weight's shard group). "
            f"An FSDP2-sharded weight (its rows over data-parallel ranks) is no vocabulary shard: "
            f"call the loss from the module that owns it (VocabParallelLinearCrossEntropyLoss)"
        )


def dtensor_layout_matches(fn: str, vocab_range, num_classes, expected: tuple[int, int], total: int) -> None:
    """A DTensor weight fixes the layout (torch.chunk's); vocab_range / num_classes may restate it."""
    if vocab_range is not None and tuple(vocab_range) != tuple(expected):
        raise InvalidArgument(
            f"{fn}: vocab_range={tuple(vocab_range)}, but this rank's rows of the DTensor linear_weight "
            f"are {tuple(expected)} (DTensor's layout); pass vocab_range=None"
        )
    if num_classes is not None and num_classes != total:
        raise InvalidArgument(
            f"{fn}: num_classes={num_classes}, but the DTensor linear_weight has {total} rows; pass "
            f"num_classes=None"
        )


def dtensor_head_input(fn: str, input: torch.Tensor, mesh, mesh_dim: int) -> tuple:
    """A DTensor input beside a DTensor weight: on the weight's mesh, Replicate on its shard dim,
    elsewhere Replicate or sharded on a leading (token) dim. Returns the outputs' placements."""
    from torch.distributed.tensor import Replicate, Shard

    nd = input.dim()
    out, ok = [], input.device_mesh == mesh
    for i, p in enumerate(input.placements):
        if type(p) is Replicate:
            out.append(p)
        elif type(p) is Shard and i != mesh_dim and p.dim % nd < nd - 1:
            out.append(Shard(p.dim % nd))
        else:
            ok = False
    if not ok:
        raise InvalidArgument(
            f"{fn}: input is a DTensor placed {_placements(input)}; beside linear_weight sharded over "
            f"mesh dim {mesh_dim} it must be on the weight's mesh, Replicate on that dim (every "
            f"rank of the vocab-parallel group holds the same tokens), and Replicate or Shard(k) of "
            f"a token dim (k < {nd - 1}) on the others"
        )
    return tuple(out)


def dtensor_replicated(fn: str, name: str, t: torch.Tensor) -> bool:
    if not all(p.is_replicate() for p in t.placements):
        raise InvalidArgument(
            f"{fn}: {name} is a DTensor placed {_placements(t)} beside a plain input; pass it "
            f"Replicate (or as a plain tensor: the same tokens on every rank of the group)"
        )
    return True


def dtensor_input_not_sequence_parallel(fn: str, input: object, sequence_parallel: bool) -> None:
    """A DTensor input beside a DTensor head is Replicate on the vocabulary's mesh dim: every token
    is already on each rank, so gathering them (sequence parallelism) would count each W times."""
    if sequence_parallel and is_dtensor(input):
        raise InvalidArgument(
            f"{fn}: sequence_parallel=True with a DTensor input (placements {_placements(input)}); a "
            f"DTensor input holds every token of the vocabulary's group already: pass "
            f"sequence_parallel=False, or this rank's slice of the tokens as a plain tensor"
        )


def dtensor_pair(fn: str, name: str, t: object) -> None:
    """One head a DTensor, the other not (vocab_parallel_linear_distillation_loss)."""
    raise InvalidArgumentType(
        f"{fn}: {name} must be a DTensor too when the other head is one (both Shard(0) on the same "
        f"mesh dim), got {type(t).__name__}; pass both heads as DTensors or both as this rank's rows"
    )


def dtensor_pair_layout(fn: str, weight, teacher_weight) -> None:
    raise InvalidArgument(
        f"{fn}: teacher_linear_weight must be sharded as linear_weight (the same mesh, the same Shard(0) "
        f"mesh dim, the same number of rows), got shape {tuple(teacher_weight.shape)} placed "
        f"{_placements(teacher_weight)} beside shape {tuple(weight.shape)} placed {_placements(weight)}"
    )


def dtensor_scalar_of_sharded_tokens(fn: str, input, reduction: str) -> None:
    raise InvalidArgument(
        f"{fn}: input is a DTensor placed {_placements(input)} (distinct tokens on some mesh dim) with "
        f"reduction={reduction!r}; the scalar would be each rank's own: use reduction='none' (a DTensor "
        f"placed as the input) and reduce it, or pass input Replicate"
    )
