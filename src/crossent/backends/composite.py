"""Backend.COMPOSITE: the row math (`backends/rows.py`) as a plain composition of differentiable torch
ops in the compute dtype (float32; float64 for float64 inputs).

Chosen where the fused kernels' precomputed gradients cannot serve: under torch.func transforms
(grad, vjp, jacrev, vmap see ordinary ops) and under torch.compile (Dynamo traces ordinary ops,
Inductor fuses them; no graph break). The fused kernels also use it to recompute a gradient with a
graph for second derivatives (`backends/autograd.py`). Exact like every backend, differentiable in
every argument torch differentiates (probability targets and their class weight, BCE targets); it
builds N x C temporaries (the memory of torch's own composition), and its sums are torch's
(deterministic for a fixed thread count, not across thread counts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as _torch_F

from .._options import LossOptions
from . import Descriptor, rows
from .common import binary_output_dtype, compute_dtype, mean_denominator, output_dtype


def _as_nc(x):
    """(C,) -> (1, C); (N, C) stays; (N, C, d1..dk) -> (N, C, D)."""
    return x.unsqueeze(0) if x.dim() == 1 else x if x.dim() == 2 else x.reshape(x.shape[0], x.shape[1], -1)


def _reduce(losses, den, opts: LossOptions, out_shape, out_dtype):
    """torch's reduction of per-row losses (plain sums: differentiable, traceable)."""
    if opts.reduction == "none":
        return losses.reshape(out_shape).to(out_dtype)
    total = losses.sum()
    return (total / den if opts.reduction == "mean" else total).to(out_dtype)


def per_row_losses(x_nc, tg: rows.Targets, opts: LossOptions):
    """Steps 1-3 of the row math through autograd: (per-row losses (N[, D]), lse)."""
    acc = compute_dtype(x_nc.dtype)
    z, _ = rows.capped(x_nc, opts, acc)
    m = z.detach().amax(1, keepdim=True)  # (the shift cancels in lse's value and gradient)
    r = z - m
    log_s = torch.log(rows.row_sum(torch.exp(r)))
    loss, _, lse = rows.row_loss(m.squeeze(1), log_s, rows.class_sums(r, m, tg, opts), tg, opts)
    return loss, lse


def cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    acc = compute_dtype(input.dtype)
    x = _as_nc(input)
    if opts.soft:
        tg = rows.targets(None, _as_nc(target), weight, opts, acc, num_classes=x.shape[1])
        out_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
    else:
        index = target.reshape(x.shape[:1] + x.shape[2:])
        tg = rows.targets(index, None, weight, opts, acc, num_classes=x.shape[1])
        out_shape = target.shape
    loss, _ = per_row_losses(x, tg, opts)
    den = None
    if opts.reduction == "mean":
        den = mean_denominator(tg.index, weight, opts, x.numel() // max(x.shape[1], 1), acc, x.device)
    return _reduce(loss, den, opts, out_shape, output_dtype(input, target, opts))


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    acc = compute_dtype(input.dtype)
    x = _as_nc(input).to(acc)
    index = target.reshape(x.shape[:1] + x.shape[2:])
    tg = rows.targets(index, None, weight, opts, acc, num_classes=x.shape[1])
    picked = x.gather(1, tg.local).squeeze(1)
    loss = torch.where(tg.valid, -(picked * tg.w_t if tg.w_t is not None else picked), 0.0)
    den = mean_denominator(index, weight, opts, index.numel(), acc, x.device) if opts.reduction == "mean" else None
    return _reduce(loss, den, opts, target.shape, opts.dtype or input.dtype)


def _binary(loss, input, target, weight, opts, logits):
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    den = float(input.numel()) if input.numel() else math.nan
    return _reduce(loss, den, opts, input.shape, binary_output_dtype(input, target, opts, logits))


def binary_cross_entropy(input, target, weight, opts: LossOptions) -> torch.Tensor:
    acc = compute_dtype(input.dtype)
    loss = rows.BCEOnProbabilities.apply(input.to(acc), target.to(acc))
    return _binary(loss, input, target, weight, opts, False)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions) -> torch.Tensor:
    acc = compute_dtype(input.dtype)
    pw = pos_weight.to(acc) if pos_weight is not None else None
    loss = rows.bce_with_logits(input.to(acc), target.to(acc), pw)
    return _binary(loss, input, target, weight, opts, True)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions) -> torch.Tensor:
    """F.linear, then this backend's cross_entropy (K-dim weights as torch: (V, *out, D)); it
    builds the N x V logits (torch.compile's custom op avoids them for 'mean'/'sum')."""
    v, d = linear_weight.shape[0], linear_weight.shape[-1]
    out = tuple(linear_weight.shape[1:-1])
    logits = _torch_F.linear(input, linear_weight.reshape(-1, d),
                             linear_bias.reshape(-1) if linear_bias is not None else None)
    logits = logits.reshape(*input.shape[:-1], v, *out)
    return cross_entropy(logits, target, weight, opts)  # ('mean' divides by a normalizer there)


DESCRIPTOR = Descriptor(runs_on=lambda device: True)
