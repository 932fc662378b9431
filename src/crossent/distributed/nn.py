"""Modules of crossent.distributed: a vocabulary-parallel output layer that owns its weight shard,
and the logits loss as a module.

Why a module owns the weight: FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3 gather a parameter in
their module's forward hooks and reduce its gradient in its backward hooks. A functional loss
called on ``lm_head.weight`` outside ``lm_head``'s forward sees a DTensor shard (FSDP2; its
sharded ``.grad`` silently stays None, even after ``unshard()``) or an empty placeholder (ZeRO-3).
Owning the weight as its own parameters, ``fully_shard(head)`` / ZeRO-3 gather it around the
head's forward and gradients arrive.
"""

from __future__ import annotations

import math

import torch

from .. import _checks
from .._checks import distributed as _dchecks
from ..nn import keep_options
from . import _layout
from .cross_entropy import vocab_parallel_cross_entropy
from .distillation import vocab_parallel_linear_distillation_loss
from .linear import vocab_parallel_linear_cross_entropy

__all__ = ["VocabParallelCrossEntropyLoss", "VocabParallelLinearCrossEntropyLoss", "VocabParallelLinearDistillationLoss"]

_NAME = "VocabParallelLinearCrossEntropyLoss"


# Rows of the full layer drawn at a time on the CPU (elements): the CPU generator fills a tensor in
# order, so drawing the (C, D) layer block by block gives its values without holding it whole.
INIT_BLOCK_ELEMENTS = 1 << 22


def _init_linear_rows(weight: torch.Tensor, bias: torch.Tensor | None, vocab_range, num_classes: int):
    """Rows [start, stop) of nn.Linear(D, num_classes)'s kaiming-uniform weight and uniform bias,
    drawn in full. Accelerator generators (Philox) number their draws per call, so there the whole
    (C, D) layer is drawn at once, as nn.Linear on that device would (memory C x D for the call, as
    Megatron's CPU initialisation holds its master weight); nothing is drawn on the meta device."""
    if weight.device.type == "meta":
        return
    start, stop = vocab_range
    d = weight.shape[1]
    full = lambda rows: torch.empty(rows, d, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        if weight.device.type != "cpu":
            w = full(num_classes)
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            weight.copy_(w[start:stop])
        else:
            rows = max(1, INIT_BLOCK_ELEMENTS // max(d, 1))
            for i in range(0, num_classes, rows):
                j = min(i + rows, num_classes)
                block = full(j - i)
                torch.nn.init.kaiming_uniform_(block, a=math.sqrt(5))  # (bound from D alone)
                lo, hi = max(i, start), min(j, stop)
                if lo < hi:
                    weight[lo - start:hi - start].copy_(block[lo - i:hi - i])
        if bias is not None:
            bound = 1 / math.sqrt(d) if d > 0 else 0
            b = torch.empty(num_classes, device=bias.device, dtype=bias.dtype)
            torch.nn.init.uniform_(b, -bound, bound)
            bias.copy_(b[start:stop])


def _own_rows(module, name, in_features, num_classes, bias, group, vocab_range, device, dtype) -> None:
    """A head module's layout and parameters: ``group``, ``vocab_range`` (default torch.chunk's),
    ``num_classes``, ``in_features``, ``linear_weight`` (V_r, D) and ``linear_bias`` (V_r,) or None,
    uninitialised (`_init_linear_rows`)."""
    module.group = _dchecks.group(name, group)
    num_classes = _dchecks.num_classes(name, num_classes)
    if vocab_range is None:
        import torch.distributed as dist

        vocab_range = _layout.ceil_div_range(num_classes, dist.get_world_size(module.group),
                                             dist.get_rank(module.group))
    start, stop = vocab_range
    module.vocab_range = _dchecks.vocab_range(name, tuple(vocab_range), stop - start, num_classes)
    module.num_classes = num_classes
    module.in_features = in_features
    factory = dict(device=device, dtype=dtype)
    module.linear_weight = torch.nn.Parameter(torch.empty(stop - start, in_features, **factory))
    module.linear_bias = torch.nn.Parameter(torch.empty(stop - start, **factory)) if bias else None


def _copy_rows(module, linear: torch.nn.Linear) -> None:
    """This rank's rows of a full ``nn.Linear(D, C)`` into the module's parameters."""
    start, stop = module.vocab_range
    with torch.no_grad():
        module.linear_weight.copy_(linear.weight[start:stop])
        if linear.bias is not None:
            module.linear_bias.copy_(linear.bias[start:stop])


class _ShardedLinearHead(torch.nn.Module):
    """What the modules owning rows of an output layer share: its initialisation and `from_linear`
    (their constructors take ``(in_features, num_classes, *, bias, device, dtype, ...)``)."""

    def reset_parameters(self) -> None:
        """``nn.Linear(in_features, num_classes)``'s initialisation, sharded: every rank draws the
        whole layer from the global generator, as that module would, and keeps its rows. So after
        one seed the shards are those of the single-device layer, and every rank's generator moves
        by the same amount (data order, dropout and anything drawn later stay replicated across the
        group; drawing only the local rows would move it by different amounts for uneven shards,
        and give every even shard the same values)."""
        _init_linear_rows(self.linear_weight, self.linear_bias, self.vocab_range, self.num_classes)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, **kwargs) -> _ShardedLinearHead:
        """This rank's rows of a full ``nn.Linear(D, C)`` (copied), with the module's options."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        _copy_rows(module, linear)
        return module


class VocabParallelLinearCrossEntropyLoss(_ShardedLinearHead):
    """The output layer of ``num_classes`` classes split over the ranks of ``group`` and its loss.

    The module owns this rank's rows [start, stop) of the full (num_classes, in_features) layer as
    its own parameters ``linear_weight`` (stop - start, in_features) and ``linear_bias`` (the
    functional's names), initialised as ``nn.Linear``'s (default layout: torch.chunk's,
    ceil(C / W) rows per rank; ``vocab_range`` for another). Direct parameters, not an inner
    ``nn.Linear`` whose forward never runs: FSDP2's and ZeRO-3's hooks on *this* module then gather
    them around its forward (a ZeRO-3 inner layer would stay partitioned). ``weight`` is the full
    class-weight buffer. ``forward(input, target, normalizer=None)`` is one call to
    `vocab_parallel_linear_cross_entropy` (see it for shapes, semantics and collectives); a
    ``normalizer`` given there overrides ``self.normalizer`` for that call (`global_normalizer`).
    ``loss_dtype`` is the functional's ``dtype=``; ``dtype`` the parameters'. `from_linear` takes
    this rank's rows of a full ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        group=None,
        vocab_range: tuple[int, int] | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        normalizer: float | torch.Tensor | None = None,
        chunk_size: int | None = None,
        sequence_parallel: bool = False,
        reduce_input_grad: bool = True,
        deterministic: bool = False,
        loss_dtype: torch.dtype | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _own_rows(self, _NAME, in_features, num_classes, bias, group, vocab_range, device, dtype)
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None
        keep_options(self, ignore_index=ignore_index, reduction=_checks.reduction(_NAME, reduction),
                     label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                     normalizer=normalizer, chunk_size=chunk_size,
                     sequence_parallel=sequence_parallel, reduce_input_grad=reduce_input_grad,
                     deterministic=deterministic, loss_dtype=loss_dtype)
        self.reset_parameters()


    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer=None) -> torch.Tensor:
        return vocab_parallel_linear_cross_entropy(
            input, self.linear_weight, target, linear_bias=self.linear_bias, group=self.group,
            weight=self.weight, reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, vocab_range=self.vocab_range,
            num_classes=self.num_classes, z_loss=self.z_loss, softcap=self.softcap,
            normalizer=self.normalizer if normalizer is None else normalizer,
            chunk_size=self.chunk_size, dtype=self.loss_dtype,
            sequence_parallel=self.sequence_parallel, reduce_input_grad=self.reduce_input_grad,
            deterministic=self.deterministic,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"vocab_range={self.vocab_range}, bias={self.linear_bias is not None}, "
            f"reduction={self.reduction}, label_smoothing={self.label_smoothing}, "
            f"z_loss={self.z_loss}, softcap={self.softcap}, sequence_parallel={self.sequence_parallel}"
        )


class VocabParallelCrossEntropyLoss(torch.nn.Module):
    """`vocab_parallel_cross_entropy` as a module (torch.nn.CrossEntropyLoss's arguments, the class
    weight as a buffer); forward(input, target, normalizer=None)."""

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, group=None,
                 vocab_range=None, num_classes=None, z_loss: float = 0.0, softcap=None,
                 normalizer=None, dtype=None, deterministic: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.group, self.vocab_range, self.num_classes = group, vocab_range, num_classes
        self.z_loss, self.softcap, self.normalizer = z_loss, softcap, normalizer
        self.dtype, self.deterministic = dtype, deterministic

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer=None) -> torch.Tensor:
        return vocab_parallel_cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            group=self.group, vocab_range=self.vocab_range, num_classes=self.num_classes,
            z_loss=self.z_loss, softcap=self.softcap,
            normalizer=self.normalizer if normalizer is None else normalizer, dtype=self.dtype,
            deterministic=self.deterministic,
        )


_DISTILL = "VocabParallelLinearDistillationLoss"


class VocabParallelLinearDistillationLoss(_ShardedLinearHead):
    """The student's output layer of ``num_classes`` classes split over the ranks of ``group`` and its
    distillation loss against a teacher's head split alike.

    Owns this rank's rows [start, stop) of the student's (num_classes, in_features) layer as its
    parameters ``linear_weight`` and ``linear_bias``, initialised as ``nn.Linear``'s, exactly as
    `VocabParallelLinearCrossEntropyLoss` (why a module owns them: this module's docstring). The teacher
    is a constant: ``forward(input, teacher_input, teacher_linear_weight, target=None,
    teacher_linear_bias=None, normalizer=None)`` takes this rank's rows of the teacher's head (the same
    ``vocab_range``) and is one call to `vocab_parallel_linear_distillation_loss` (see it for shapes,
    semantics and collectives); a ``normalizer`` given there overrides ``self.normalizer``.
    `from_linear` takes this rank's rows of a full ``nn.Linear``.
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = False, group=None,
                 vocab_range: tuple[int, int] | None = None, beta: float = 0.5, temperature: float = 1.0,
                 softcap: float | None = None, teacher_softcap: float | None = None, hard_weight: float = 0.0,
                 soft_weight: float = 1.0, ignore_index: int = -100, reduction: str = "mean",
                 normalizer: float | torch.Tensor | None = None, chunk_size: int | None = None,
                 deterministic: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        _own_rows(self, _DISTILL, in_features, num_classes, bias, group, vocab_range, device, dtype)
        keep_options(self, beta=beta, temperature=temperature, softcap=softcap, teacher_softcap=teacher_softcap,
                     hard_weight=hard_weight, soft_weight=soft_weight, ignore_index=ignore_index,
                     reduction=_checks.reduction(_DISTILL, reduction), normalizer=normalizer,
                     chunk_size=chunk_size, deterministic=deterministic)
        self.reset_parameters()


    def forward(self, input: torch.Tensor, teacher_input: torch.Tensor, teacher_linear_weight: torch.Tensor,
                target: torch.Tensor | None = None, teacher_linear_bias: torch.Tensor | None = None,
                normalizer=None) -> torch.Tensor:
        return vocab_parallel_linear_distillation_loss(
            input, self.linear_weight, teacher_input, teacher_linear_weight, group=self.group,
            linear_bias=self.linear_bias, teacher_linear_bias=teacher_linear_bias, target=target, beta=self.beta,
            temperature=self.temperature, softcap=self.softcap, teacher_softcap=self.teacher_softcap,
            hard_weight=self.hard_weight, soft_weight=self.soft_weight, ignore_index=self.ignore_index,
            reduction=self.reduction, normalizer=self.normalizer if normalizer is None else normalizer,
            chunk_size=self.chunk_size, vocab_range=self.vocab_range, num_classes=self.num_classes,
            deterministic=self.deterministic)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, vocab_range={self.vocab_range}, "
                f"bias={self.linear_bias is not None}, beta={self.beta}, temperature={self.temperature}, "
                f"hard_weight={self.hard_weight}, soft_weight={self.soft_weight}, reduction={self.reduction}")
