"""nn.Module wrappers: they hold the options (weights as buffers, so .to() and state_dict see
them) and call the functional API once. Constructor arguments are torch.nn's, in torch's order;
CrossEntropyLoss adds crossent's extensions as keyword-only arguments."""

from __future__ import annotations

import math

import torch

from . import _checks
from . import functional as F
from ._torch_version import LinearCrossEntropyOptions  # torch's class, or crossent's before 2.13
from .functional import _legacy_reduction

__all__ = [
    "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss",
    "LinearCrossEntropyOptions", "NLLLoss",
]


class _Loss(torch.nn.Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _legacy_reduction(size_average, reduce, reduction)


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None


def keep_options(module: torch.nn.Module, **options) -> None:
    """A loss module's options as plain attributes, which may be reassigned between steps (as
    torch's modules keep theirs): forward reads them at every call."""
    for name, value in options.items():
        setattr(module, name, value)


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


class LinearCrossEntropyLoss(_WeightedLoss):
    """torch.nn.LinearCrossEntropyLoss (torch 2.13) with crossent's fused loss: a module that owns
    its linear layer and computes the cross-entropy of its output without materialising the logits.

    Like torch's: ``self.linear`` is an ``nn.Linear(in_features, num_classes * prod(out_features),
    bias=bias)`` (flat storage, reshaped to (C, *out_features, in_features) in forward), so
    FSDP/ZeRO wrap it as any layer and ``state_dict`` keys match torch's module (``linear.weight``,
    ``linear.bias``, the class ``weight`` buffer); forward(input, target) is one call to
    ``crossent.linear_cross_entropy`` -- see it for shapes, semantics and what crossent does with
    ``options``. A head owned by another module (a language model's ``lm_head``) uses the
    functional form, ``crossent.linear_cross_entropy(h, lm_head.weight, target, ...)``.

    Keyword-only extensions (as in crossent.linear_cross_entropy): z_loss, softcap, normalizer
    (may be reassigned between steps, e.g. the token count of the whole accumulated batch),
    chunk_size, and ``loss_dtype`` -- the functional's ``dtype=`` (here ``dtype`` is the
    parameters' dtype, as in torch).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        out_features: tuple[int, ...] = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: torch.Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        options=None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        normalizer: float | torch.Tensor | None = None,
        chunk_size: int | None = None,
        loss_dtype: torch.dtype | None = None,
    ) -> None:
        _checks.linear_module(
            "LinearCrossEntropyLoss", in_features, num_classes, out_features, weight, label_smoothing
        )
        super().__init__(weight, None, None, reduction)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(
            in_features, math.prod(self.out_features, start=num_classes), bias=bias,
            device=device, dtype=dtype,
        )
        keep_options(self, options=options, z_loss=z_loss, softcap=softcap, normalizer=normalizer,
                     chunk_size=chunk_size, loss_dtype=loss_dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = (self.num_classes, *self.out_features)
        linear_weight = self.linear.weight.reshape(*shape, self.linear.in_features)
        linear_bias = self.linear.bias.reshape(shape) if self.linear.bias is not None else None
        return F.linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options, z_loss=self.z_loss,
            softcap=self.softcap, normalizer=self.normalizer, chunk_size=self.chunk_size,
            dtype=self.loss_dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
            f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
            f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, options={self.options}"
        )
