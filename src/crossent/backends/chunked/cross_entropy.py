"""Fused cross-entropy and NLL on logits of any layout: (C,), (N, C) or (N, C, d1..dk).

cross_entropy: forward runs the row kernel (`RowKernels.ce_forward`: kernel.py's loop over chunks
of ~1M elements, or the Triton kernel over all rows at once) and writes the gradient
while it computes the loss, so forward+backward reads the logits once and writes the gradient once;
no N x C temporary exists beside the gradient (and with ``inplace_backward`` not even that).
Without a gradient the exp goes to a reused chunk buffer. nll_loss: l_i = -w[t_i] x_i[t_i], a
gather forward and a scatter backward (its gradient is sparse, so nothing is precomputed).
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite
from ..common import (
    compute_dtype,
    deterministic_sum,
    mean_denominator,
    output_dtype,
    reduce,
    safe_reciprocal,
)
from .kernel import ChunkTarget
from .row_kernels import TORCH_OPS, RowKernels


def _as_nc(x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) stays; (N, C, d1..dk) -> (N, C, d1*..*dk) (a view where possible)."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.reshape(x.shape[0], x.shape[1], -1)


def _as_samples(t: torch.Tensor, x_nc: torch.Tensor) -> torch.Tensor:
    """Class-index targets () / (N,) / (N, d1..dk) -> (N[, D]) matching x_nc."""
    return t.reshape(x_nc.shape[:1] + x_nc.shape[2:])


def _denominator(index, weight, opts, x_nc, acc):
    if opts.reduction != "mean":
        return None
    samples = x_nc.numel() // max(x_nc.shape[1], 1)
    return mean_denominator(index, weight, opts, samples, acc, x_nc.device)


class _CrossEntropyFn(torch.autograd.Function):
    """Fused cross-entropy: the gradient is computed in forward and only scaled in backward.

    The forward already folds 1/den ('mean') into the gradient, so a backward with grad_output == 1
    (the usual `loss.backward()`) hands it over untouched and a bfloat16 gradient is rounded once.
    For float16 inputs the gradient is stored unscaled (O(1) values) and scaled once in backward,
    so an AMP loss scale multiplies before anything can underflow in float16's narrow range.
    """

    @staticmethod
    def forward(x, index, probs, weight, opts, out_shape, out_dtype, loss, kernels, box):
        losses, den, grad, post_scale = _precompute(x, index, probs, weight, opts, kernels)
        if opts.inplace_backward:
            torch.autograd.graph.increment_version(x)  # anything else that saved x now fails loudly
        # Handed to setup_context in `box`, not as outputs: an output costs autograd bookkeeping
        # (measured: +43 MiB of peak in the linear loss at 2048 x 512 x 128256).
        box.extend((grad, post_scale))
        return reduce(losses, den, opts, out_shape, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, index, probs, weight, opts, out_shape, out_dtype, loss, kernels, box = inputs
        grad, post_scale = box
        box.clear()
        autograd.stash(ctx, (grad,), post_scale=post_scale)
        def regrad(x):
            _, _, grad, post_scale = _precompute(x, index, probs, weight, opts, kernels)
            return (grad,), post_scale

        autograd.remember(ctx, "cross_entropy", (x,), loss, regrad)
        if opts.inplace_backward:
            ctx.versions = (None,)  # x now holds the gradient: recomputing from it is impossible
        ctx.x_shape = x.shape
        ctx.reduction = opts.reduction
        ctx.per_sample = grad.shape[:1] + (1,) + grad.shape[2:]  # grad_output along the class dim

    @staticmethod
    def backward(ctx, grad_out):
        per_sample = lambda go: go.reshape(ctx.per_sample) if ctx.reduction == "none" else go
        g = autograd.input_gradient(ctx, grad_out, per_sample)
        return g.view(ctx.x_shape), None, None, None, None, None, None, None, None, None


def _precompute(x, index, probs, weight, opts, kernels):
    """Forward's work: (per-sample losses, 'mean' denominator, gradient, post_scale)."""
    x_nc = _as_nc(x)
    acc = compute_dtype(x.dtype)
    den = _denominator(index, weight, opts, x_nc, acc)
    fold = den is not None and x.dtype != torch.float16
    grad = x_nc if opts.inplace_backward else _memory.empty(x_nc.shape, x.dtype, x.device)
    inv_den = safe_reciprocal(den) if den is not None else None
    scale = inv_den if fold else 1.0
    losses = kernels.ce_forward(x_nc, ChunkTarget(index, probs), weight, opts, grad=grad, scale=scale)
    return losses, den, grad, None if fold else inv_den


def cross_entropy(input, target, weight, opts: LossOptions, *, kernels: RowKernels = TORCH_OPS):
    """Backend entry (checked arguments): the loss; a gradient only when autograd needs one."""
    x_nc = _as_nc(input)
    out_dtype = output_dtype(input, target, opts)
    soft = opts.soft
    index = None if soft else _as_samples(target, x_nc)
    probs = _as_nc(target) if soft else None
    out_shape = (input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])) if soft else target.shape
    if torch.is_grad_enabled() and input.requires_grad:
        loss = lambda x: composite.cross_entropy(x, target, weight, opts)  # (for recomputing)
        return _CrossEntropyFn.apply(input, index, probs, weight, opts, out_shape, out_dtype, loss, kernels, [])
    # Evaluation: loss only, no gradient computed or kept.
    losses = kernels.ce_forward(x_nc, ChunkTarget(index, probs), weight, opts, grad=None, scale=1.0)
    den = _denominator(index, weight, opts, x_nc, compute_dtype(input.dtype))
    return reduce(losses, den, opts, out_shape, out_dtype)


class _NLLFn(torch.autograd.Function):
    @staticmethod
    def forward(x, index, weight, opts, out_shape):
        x_nc = _as_nc(x)
        acc = compute_dtype(x.dtype)
        valid = index != opts.ignore_index
        safe = torch.where(valid, index, 0).unsqueeze(1)
        w_t = weight.to(acc)[safe.squeeze(1)] if weight is not None else torch.ones(index.shape, dtype=acc, device=x.device)
        w_t = torch.where(valid, w_t, 0.0)
        losses = -x_nc.gather(1, safe).squeeze(1).to(acc) * w_t
        den = deterministic_sum(w_t) if opts.reduction == "mean" else w_t.new_ones(())
        return reduce(losses, den, opts, out_shape, opts.dtype or x.dtype), safe, w_t, den

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, index, weight, opts, out_shape = inputs
        _, safe, w_t, den = output
        ctx.mark_non_differentiable(safe, w_t, den)
        ctx.save_for_backward(safe, w_t, den)
        ctx.meta = (x.shape, _as_nc(x).shape, opts.reduction, x.dtype)

    @staticmethod
    def backward(ctx, grad_out, *_):
        # Differentiable in grad_out (the gradient does not depend on x): double backward works.
        safe, w_t, den = ctx.saved_tensors
        x_shape, nc_shape, reduction, dtype = ctx.meta
        if reduction == "none":
            coef = -w_t * grad_out.reshape(w_t.shape).to(w_t.dtype)
        else:
            coef = -w_t * (grad_out.to(w_t.dtype) * safe_reciprocal(den))
        g = torch.zeros(nc_shape, dtype=dtype, device=safe.device).scatter(1, safe, coef.unsqueeze(1).to(dtype))
        return g.view(x_shape), None, None, None, None


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    """Backend entry (checked arguments): torch's nll_loss."""
    x_nc = _as_nc(input)
    index = _as_samples(target, x_nc)
    return _NLLFn.apply(input, index, weight, opts, target.shape)[0]
