"""nn.Module wrappers: they hold the options (weights as buffers, so .to() and state_dict see
them) and call the functional API once. Constructor arguments are torch.nn's, in torch's order;
CrossEntropyLoss adds crossent's extensions as keyword-only arguments."""

from __future__ import annotations

import torch

from . import functional as F
from .functional import _legacy_reduction

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss", "NLLLoss"]


class _Loss(torch.nn.Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _legacy_reduction(size_average, reduce, reduction)


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None


class CrossEntropyLoss(_WeightedLoss):
    """torch.nn.CrossEntropyLoss with crossent's kernels; see crossent.cross_entropy for the math.

    Keyword-only extensions: z_loss, softcap, inplace_backward (as in crossent.cross_entropy).
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing,
            z_loss=self.z_loss, softcap=self.softcap, inplace_backward=self.inplace_backward,
        )


class NLLLoss(_WeightedLoss):
    """torch.nn.NLLLoss with crossent's kernels; see crossent.nll_loss."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """torch.nn.BCELoss with crossent's kernels; see crossent.binary_cross_entropy."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """torch.nn.BCEWithLogitsLoss with crossent's kernels; see crossent.binary_cross_entropy_with_logits."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean",
                 pos_weight=None) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.weight: torch.Tensor | None
        self.pos_weight: torch.Tensor | None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)



class LinearCrossEntropyLoss(torch.nn.Module):
    """crossent.linear_cross_entropy as a Module: cross-entropy of ``F.linear(input, weight, bias)``
    without materialising the logits. Holds the options (class_weight as a buffer); the linear
    weight and bias are forward's arguments, so the layer that owns them keeps them.

    All options are keyword-only (``class_weight`` is not the linear ``weight``); ``normalizer``
    may be reassigned between steps (e.g. the token count of the whole accumulated batch).
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        class_weight: torch.Tensor | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        normalizer: float | torch.Tensor | None = None,
        chunk_size: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.class_weight: torch.Tensor | None
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.normalizer = normalizer
        self.chunk_size = chunk_size
        self.dtype = dtype  # of the loss: None (the input's) or torch.float32 for 16-bit inputs

    def forward(
        self, input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return F.linear_cross_entropy(
            input, weight, target, bias, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, class_weight=self.class_weight,
            z_loss=self.z_loss, softcap=self.softcap, normalizer=self.normalizer,
            chunk_size=self.chunk_size, dtype=self.dtype,
        )
