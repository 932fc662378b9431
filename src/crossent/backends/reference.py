"""Backend.REFERENCE: `crossent.reference`'s float64 formulas through autograd, in the backend
contract. Slow, the oracle, differentiable in every argument torch differentiates (torch's refusals
are `_checks`'); losses come back in the dtype torch would return. Independent of the row math the
other backends share (backends/rows.py): comparing them with it compares two implementations."""

from __future__ import annotations

import torch

from .. import reference
from .._options import LossOptions
from . import Descriptor
from .common import binary_output_dtype, output_dtype

_F64 = torch.float64


def cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.cross_entropy(input, target, weight, opts.ignore_index, opts.reduction,
                                   opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap)
    return loss.to(output_dtype(input, target, opts))


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.nll_loss(input, target, weight, opts.ignore_index, opts.reduction)
    return loss.to(opts.dtype or input.dtype)


def binary_cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.binary_cross_entropy(input, target, weight, opts.reduction)
    return loss.to(binary_output_dtype(input, target, opts, logits=False))


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.binary_cross_entropy_with_logits(input, target, weight, opts.reduction, pos_weight)
    return loss.to(binary_output_dtype(input, target, opts, logits=True))


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions) -> torch.Tensor:
    loss = reference.linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, opts.reduction, opts.ignore_index,
        opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap, normalizer=opts.normalizer,
    )
    return loss.to(output_dtype(input, target, opts))


DESCRIPTOR = Descriptor(runs_on=lambda device: True)
