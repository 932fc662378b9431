"""The reference backend: `crossent.reference`'s formulas through autograd, in the backend contract.

`formulas(precision_of)` builds the five contract functions evaluating those formulas in the dtype
``precision_of(input.dtype)``: float64 here (Backend.REFERENCE: slow, the oracle, differentiable in
every argument torch differentiates), the compute dtype in `composite.py`. Losses come back in the
dtype torch would return.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .. import reference
from .._options import LossOptions
from .common import binary_output_dtype, output_dtype


def formulas(precision_of) -> SimpleNamespace:
    """The backend contract, from reference.py's formulas evaluated in precision_of(input.dtype)."""

    def cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
        loss = reference.cross_entropy(
            input, target, weight, opts.ignore_index, opts.reduction, opts.label_smoothing,
            z_loss=opts.z_loss, softcap=opts.softcap, precision=precision_of(input.dtype),
        )
        return loss.to(output_dtype(input, target, opts))

    def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
        loss = reference.nll_loss(
            input, target, weight, opts.ignore_index, opts.reduction, precision=precision_of(input.dtype)
        )
        return loss.to(opts.dtype or input.dtype)

    def binary_cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
        loss = reference.binary_cross_entropy(
            input, target, weight, opts.reduction, precision=precision_of(input.dtype)
        )
        return loss.to(binary_output_dtype(input, target, opts, logits=False))

    def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions) -> torch.Tensor:
        loss = reference.binary_cross_entropy_with_logits(
            input, target, weight, opts.reduction, pos_weight, precision=precision_of(input.dtype)
        )
        return loss.to(binary_output_dtype(input, target, opts, logits=True))

    def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions) -> torch.Tensor:
        loss = reference.linear_cross_entropy(
            input, linear_weight, target, linear_bias, weight, opts.reduction, opts.ignore_index,
            opts.label_smoothing, z_loss=opts.z_loss, softcap=opts.softcap,
            normalizer=opts.normalizer, precision=precision_of(input.dtype),
        )
        return loss.to(output_dtype(input, target, opts))

    return SimpleNamespace(
        cross_entropy=cross_entropy, nll_loss=nll_loss, binary_cross_entropy=binary_cross_entropy,
        binary_cross_entropy_with_logits=binary_cross_entropy_with_logits,
        linear_cross_entropy=linear_cross_entropy,
    )


_float64 = formulas(lambda dtype: torch.float64)
cross_entropy = _float64.cross_entropy
nll_loss = _float64.nll_loss
binary_cross_entropy = _float64.binary_cross_entropy
binary_cross_entropy_with_logits = _float64.binary_cross_entropy_with_logits
linear_cross_entropy = _float64.linear_cross_entropy
