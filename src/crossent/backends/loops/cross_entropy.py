"""Fused cross-entropy and NLL on logits of any layout: (C,), (N, C) or (N, C, d1..dk).

cross_entropy: forward runs the backend's row kernel (`RowKernels.ce_forward`: the torch-op loop
over chunks of ~1M elements, or the Triton kernel over all rows at once) and writes the gradient
while it computes the loss, so forward+backward reads the logits once and writes the gradient once;
no N x C temporary exists beside the gradient (and with ``inplace_backward`` not even that).
Without a gradient the exp goes to a reused chunk buffer. nll_loss: l_i = -w[t_i] x_i[t_i], a
gather forward and a scatter backward (its gradient is sparse, so nothing is precomputed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite, rows
from ..common import (
    compute_dtype,
    deterministic_sum,
    mean_denominator,
    output_dtype,
    reduce,
    safe_reciprocal,
)
from .kernels import RowKernels


def as_nc(x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) stays; (N, C, d1..dk) -> (N, C, d1*..*dk) (a view where possible)."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.reshape(x.shape[0], x.shape[1], -1)


def _as_samples(t: torch.Tensor, x_nc: torch.Tensor) -> torch.Tensor:
    """Class-index targets () / (N,) / (N, d1..dk) -> (N[, D]) matching x_nc."""
    return t.reshape(x_nc.shape[:1] + x_nc.shape[2:])


@dataclass(frozen=True)
class CECall:
    """One call of the fused cross-entropy: everything but its tensors."""

    opts: LossOptions
    out_shape: torch.Size
    out_dtype: torch.dtype
    kernels: RowKernels
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)


def _targets(x_nc, index, probs, weight, opts):
    return rows.targets(index, probs, weight, opts, compute_dtype(x_nc.dtype), num_classes=x_nc.shape[1])


def _denominator(index, weight, opts, x_nc):
    if opts.reduction != "mean":
        return None
    samples = x_nc.numel() // max(x_nc.shape[1], 1)
    return mean_denominator(index, weight, opts, samples, compute_dtype(x_nc.dtype), x_nc.device)


def _precompute(x, index, probs, weight, call: CECall):
    """Forward's work: (per-row losses, 'mean' denominator, gradient, post_scale). The forward folds
    1/den ('mean') into the gradient, so a backward with grad_output == 1 (the usual
    ``loss.backward()``) hands it over untouched and a bfloat16 gradient is rounded once; a float16
    gradient is stored unscaled (O(1) values) and scaled once in backward, so an AMP loss scale
    multiplies before anything can underflow in float16's narrow range."""
    opts = call.opts
    x_nc = as_nc(x)
    den = _denominator(index, weight, opts, x_nc)
    fold = den is not None and x.dtype != torch.float16
    grad = x_nc if opts.inplace_backward else _memory.empty(x_nc.shape, x.dtype, x.device)
    inv_den = safe_reciprocal(den) if den is not None else None
    tg = _targets(x_nc, index, probs, weight, opts)
    losses = call.kernels.ce_forward(x_nc, tg, opts, grad=grad, scale=inv_den if fold else 1.0)
    return losses, den, grad, None if fold else inv_den


class _CrossEntropyFn(torch.autograd.Function):
    """Fused cross-entropy: the gradient is computed in forward and only scaled in backward."""

    @staticmethod
    def forward(call, x, index, probs, weight):
        losses, den, grad, post_scale = _precompute(x, index, probs, weight, call)
        if call.opts.inplace_backward:
            torch.autograd.graph.increment_version(x)  # anything else that saved x now fails loudly
        call.handover.put((grad, post_scale))
        return reduce(losses, den, call.opts, call.out_shape, call.out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, x, index, probs, weight = inputs
        grad, post_scale = call.handover.take()
        autograd.stash(ctx, (grad,), post_scale=post_scale, scale_grad=call.kernels.scale_grad)
        opts = call.opts
        # the caller's target: class indices have the loss's per-sample shape, probabilities x's
        target = probs.reshape(x.shape) if probs is not None else index.reshape(call.out_shape)
        loss = lambda x: composite.cross_entropy(x, target, weight, opts)

        def regrad(x):
            _, _, grad, post_scale = _precompute(x, index, probs, weight, call)
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
        return None, g.view(ctx.x_shape), None, None, None


def cross_entropy(input, target, weight, opts: LossOptions, *, kernels: RowKernels):
    """Backend entry (checked arguments): the loss; a gradient only when autograd needs one."""
    x_nc = as_nc(input)
    soft = opts.soft
    index = None if soft else _as_samples(target, x_nc)
    probs = as_nc(target) if soft else None
    out_shape = (input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])) if soft else target.shape
    call = CECall(opts, out_shape, output_dtype(input, target, opts), kernels)
    if torch.is_grad_enabled() and input.requires_grad:
        return _CrossEntropyFn.apply(call, input, index, probs, weight)
    # Evaluation: loss only, no gradient computed or kept.
    losses = kernels.ce_forward(x_nc, _targets(x_nc, index, probs, weight, opts), opts, grad=None, scale=1.0)
    return reduce(losses, _denominator(index, weight, opts, x_nc), opts, out_shape, call.out_dtype)


@dataclass(frozen=True)
class NLLCall:
    """One call of nll_loss: everything but its tensors."""

    opts: LossOptions
    out_shape: torch.Size
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)


class _NLLFn(torch.autograd.Function):
    """l_i = -w[t_i] x_i[t_i]: a gather forward, a scatter backward (nothing to precompute)."""

    @staticmethod
    def forward(call, x, index, weight):
        opts = call.opts
        x_nc = as_nc(x)
        acc = compute_dtype(x.dtype)
        valid = index != opts.ignore_index
        safe = torch.where(valid, index, 0).unsqueeze(1)
        w_t = weight.to(acc)[safe.squeeze(1)] if weight is not None else torch.ones(index.shape, dtype=acc, device=x.device)
        w_t = torch.where(valid, w_t, 0.0)
        losses = -x_nc.gather(1, safe).squeeze(1).to(acc) * w_t
        den = deterministic_sum(w_t) if opts.reduction == "mean" else w_t.new_ones(())
        call.handover.put((safe, w_t, den))
        return reduce(losses, den, opts, call.out_shape, opts.dtype or x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, x, index, weight = inputs
        ctx.save_for_backward(*call.handover.take())
        ctx.meta = (x.shape, as_nc(x).shape, call.opts.reduction, x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        # Differentiable in grad_out (the gradient does not depend on x): double backward works.
        safe, w_t, den = ctx.saved_tensors
        x_shape, nc_shape, reduction, dtype = ctx.meta
        if reduction == "none":
            coef = -w_t * grad_out.reshape(w_t.shape).to(w_t.dtype)
        else:
            coef = -w_t * (grad_out.to(w_t.dtype) * safe_reciprocal(den))
        g = torch.zeros(nc_shape, dtype=dtype, device=safe.device).scatter_(1, safe, coef.unsqueeze(1).to(dtype))
        return None, g.view(x_shape), None, None


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    """Backend entry (checked arguments): torch's nll_loss."""
    index = _as_samples(target, as_nc(input))
    return _NLLFn.apply(NLLCall(opts, target.shape), input, index, weight)
