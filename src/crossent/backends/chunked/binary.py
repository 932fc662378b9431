"""Fused binary cross-entropy, on probabilities and on logits: one elementwise pass per chunk of
rows computes the loss and its gradient.

    on probabilities   l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))
                       dl/dp = w (p - y) / max(p (1-p), 1e-12)           (torch's clamps)
    on logits          l = w ((1-y) x + k softplus(-x)),  k = 1 + (pw - 1) y
                       dl/dx = w (k sigmoid(x) - pw y)

The row kernel (`RowKernels.bce_forward`) is binary_kernel.py's torch ops or the Triton one.
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite
from ..common import binary_output_dtype
from .row_kernels import TORCH_OPS, RowKernels


def _bce_reduce(total, x, y, opts, logits):
    if opts.reduction == "mean":
        total = total / x.numel() if x.numel() else total * float("nan")
    return total.to(binary_output_dtype(x, y, opts, logits))


class _BCEFn(torch.autograd.Function):
    @staticmethod
    def forward(x, y, w, pw, logits, opts, kernels, box):
        grad = _memory.empty(x.shape, x.dtype, x.device)
        total = kernels.bce_forward(x, y, w, pw, logits, opts, grad)
        box.append(grad)  # for setup_context (an output would cost autograd bookkeeping)
        return _bce_reduce(total, x, y, opts, logits)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, w, pw, logits, opts, kernels, box = inputs
        grad = box.pop()
        fn = "binary_cross_entropy" + ("_with_logits" if logits else "")
        autograd.stash(ctx, (grad,))
        if logits:
            loss = lambda x: composite.binary_cross_entropy_with_logits(x, y, w, pw, opts)
        else:
            loss = lambda x: composite.binary_cross_entropy(x, y, w, opts)
        def regrad(x):
            grad = _memory.empty(x.shape, x.dtype, x.device)
            kernels.bce_forward(x, y, w, pw, logits, opts, grad)
            return (grad,), None

        autograd.remember(ctx, fn, (x,), loss, regrad)
        ctx.meta = (opts.reduction, x.numel())

    @staticmethod
    def backward(ctx, grad_out):
        reduction, n = ctx.meta
        g = autograd.input_gradient(ctx, grad_out, lambda go: go / n if reduction == "mean" else go)
        return g, None, None, None, None, None, None, None


def _binary(input, target, weight, pos_weight, opts: LossOptions, logits: bool, kernels: RowKernels):
    if torch.is_grad_enabled() and input.requires_grad:
        return _BCEFn.apply(input, target, weight, pos_weight, logits, opts, kernels, [])
    total = kernels.bce_forward(input, target, weight, pos_weight, logits, opts, None)
    return _bce_reduce(total, input, target, opts, logits)


def binary_cross_entropy(input, target, weight, opts: LossOptions, *, kernels: RowKernels = TORCH_OPS):
    """Backend entry (checked arguments): torch's binary_cross_entropy on probabilities."""
    return _binary(input, target, weight, None, opts, False, kernels)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions, *,
                                     kernels: RowKernels = TORCH_OPS):
    """Backend entry (checked arguments): torch's binary_cross_entropy_with_logits."""
    return _binary(input, target, weight, pos_weight, opts, True, kernels)
