"""The reference backend: `crossent.reference`'s float64 formulas through autograd, in the backend
contract. Slow, and differentiable in every argument torch differentiates (class weights and
probability targets included); the loss comes back in the dtype torch would return."""

from __future__ import annotations

import torch

from .. import reference
from .._options import LossOptions
from .common import output_dtype


def cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.cross_entropy(
        input, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap,
    )
    return loss.to(output_dtype(input, target, opts))


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    return reference.nll_loss(input, target, weight, opts.ignore_index, opts.reduction).to(input.dtype)


def binary_cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    return reference.binary_cross_entropy(input, target, weight, opts.reduction).to(input.dtype)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.binary_cross_entropy_with_logits(input, target, weight, opts.reduction, pos_weight)
    return loss.to(input.dtype)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, opts.reduction, opts.ignore_index,
        opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap, normalizer=opts.normalizer,
    )
    return loss.to(output_dtype(input, target, opts))
