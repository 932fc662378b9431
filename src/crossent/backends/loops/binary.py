"""Fused binary cross-entropy, on probabilities and on logits: one elementwise pass per chunk of
rows computes the loss and its gradient (the formulas: `backends/rows.py`, end). The row kernel
(`RowKernels.bce_forward`) is the torch-op one or the Triton one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite
from ..common import binary_output_dtype
from .kernels import RowKernels


@dataclass(frozen=True)
class BCECall:
    """One call of a fused binary loss: everything but its tensors."""

    opts: LossOptions
    logits: bool
    kernels: RowKernels
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)

    @property
    def name(self) -> str:
        return "binary_cross_entropy" + ("_with_logits" if self.logits else "")

    def reduce(self, total, x, y):
        if self.opts.reduction == "mean":
            total = total / x.numel() if x.numel() else total * float("nan")
        return total.to(binary_output_dtype(x, y, self.opts, self.logits))

    def forward(self, x, y, w, pw, grad):
        return self.kernels.bce_forward(x, y, w, pw, self.logits, self.opts, grad)


class _BCEFn(torch.autograd.Function):
    @staticmethod
    def forward(call, x, y, w, pw):
        grad = _memory.empty(x.shape, x.dtype, x.device)
        total = call.forward(x, y, w, pw, grad)
        call.handover.put(grad)
        return call.reduce(total, x, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, x, y, w, pw = inputs
        autograd.stash(ctx, (call.handover.take(),))
        opts = call.opts
        if call.logits:
            loss = lambda x: composite.binary_cross_entropy_with_logits(x, y, w, pw, opts)
        else:
            loss = lambda x: composite.binary_cross_entropy(x, y, w, opts)

        def regrad(x):
            grad = _memory.empty(x.shape, x.dtype, x.device)
            call.forward(x, y, w, pw, grad)
            return (grad,), None

        autograd.remember(ctx, call.name, (x,), loss, regrad)
        ctx.meta = (opts.reduction, x.numel())

    @staticmethod
    def backward(ctx, grad_out):
        reduction, n = ctx.meta
        g = autograd.input_gradient(ctx, grad_out, lambda go: go / n if reduction == "mean" else go)
        return None, g, None, None, None


def _binary(input, target, weight, pos_weight, call: BCECall):
    if torch.is_grad_enabled() and input.requires_grad:
        return _BCEFn.apply(call, input, target, weight, pos_weight)
    return call.reduce(call.forward(input, target, weight, pos_weight, None), input, target)


def binary_cross_entropy(input, target, weight, opts: LossOptions, *, kernels: RowKernels):
    """Backend entry (checked arguments): torch's binary_cross_entropy on probabilities."""
    return _binary(input, target, weight, None, BCECall(opts, False, kernels))


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions, *,
                                     kernels: RowKernels):
    """Backend entry (checked arguments): torch's binary_cross_entropy_with_logits."""
    return _binary(input, target, weight, pos_weight, BCECall(opts, True, kernels))
