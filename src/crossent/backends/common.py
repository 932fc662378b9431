"""Numerics every backend shares: compute and output dtypes, thread-independent sums, the 'mean'
denominator, and the final reduction. Public helpers, so that no backend imports a sibling's
privates."""

from __future__ import annotations

import torch

from .._options import LossOptions

# Below torch's grain size (at::internal::GRAIN_SIZE) a reduction runs on one thread.
SERIAL_REDUCTION = 32768
_BLOCK = 1024


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax math runs in float64 for float64 inputs and in float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_dtype(input: torch.Tensor, target: torch.Tensor, opts: LossOptions) -> torch.dtype:
    """The returned loss's dtype: torch's (the input's; with probability targets, the promotion of
    input and target), promoted to the caller's ``dtype=`` (float32 for 16-bit inputs) if given."""
    out = torch.result_type(input, target) if opts.soft else input.dtype
    return out if opts.dtype is None else torch.promote_types(out, opts.dtype)


def binary_output_dtype(input: torch.Tensor, target: torch.Tensor, opts: LossOptions, logits: bool) -> torch.dtype:
    """The binary losses' dtype, torch's: the input's for binary_cross_entropy (whose target has
    the input's dtype: checked); the *target's* for binary_cross_entropy_with_logits (torch
    computes ``(1 - target).mul_(input)...``, which keeps the target's dtype: float32 logits with
    float16 targets give a float16 loss); promoted to ``opts.dtype`` (float32 under autocast)."""
    out = target.dtype if logits else input.dtype
    return out if opts.dtype is None else torch.promote_types(out, opts.dtype)


def deterministic_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum of all elements in an order that does not depend on the number of threads.

    torch splits a large full reduction across threads (the split depends on the thread count).
    Summing fixed blocks of 1024 as separate outputs (one thread each), recursively, fixes the order.
    """
    v = v.reshape(-1)
    while v.numel() > SERIAL_REDUCTION:
        pad = (-v.numel()) % _BLOCK
        if pad:
            v = torch.cat([v, v.new_zeros(pad)])
        v = v.view(-1, _BLOCK).sum(1)
    return v.sum()


def fixed_order_reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """'none', 'sum' or 'mean' (over all elements) of unreduced losses, in a thread-independent
    order: torch's own order where it is serial (small tensors), else `deterministic_sum`."""
    if reduction == "none":
        return losses
    if reduction not in ("mean", "sum"):
        raise ValueError(reduction)  # (torch's refusal, as it were: crossent's checks say why)
    if losses.numel() <= SERIAL_REDUCTION:
        return losses.mean() if reduction == "mean" else losses.sum()
    total = deterministic_sum(losses)
    return total / losses.numel() if reduction == "mean" else total


def mean_denominator(index, weight, opts: LossOptions, num_samples: int, acc, device) -> torch.Tensor:
    """torch's 'mean' denominator: the summed class weights w[t_i] of the counted samples (class
    indices; their count without weights), the number of samples (probabilities), or the caller's
    ``normalizer``."""
    if isinstance(opts.normalizer, torch.Tensor):
        return opts.normalizer.to(device=device, dtype=acc).reshape(())
    if opts.normalizer is not None:
        # (torch.full, not torch.tensor: a fill kernel, where torch.tensor would copy from the host,
        # a sync on a GPU and a failure under CUDA-graph capture)
        return torch.full((), float(opts.normalizer), dtype=acc, device=device)
    if index is None:
        return torch.full((), float(num_samples), dtype=acc, device=device)
    valid = index != opts.ignore_index
    if weight is None:
        return valid.sum().to(acc)
    w_t = weight.to(acc)[torch.where(valid, index, 0)]
    return deterministic_sum(torch.where(valid, w_t, 0.0))


def safe_reciprocal(den: torch.Tensor) -> torch.Tensor:
    """1/den, and 0 when den is 0 (all targets ignored): torch's gradient is then zero, not nan."""
    return torch.where(den != 0, 1.0 / den, 0.0)


def reduce(losses: torch.Tensor, den, opts: LossOptions, out_shape, out_dtype) -> torch.Tensor:
    """Per-sample losses (compute dtype) -> the returned loss: reshaped for 'none', else the
    fixed-order total, divided by ``den`` for 'mean'."""
    if opts.reduction == "none":
        return losses.reshape(out_shape).to(out_dtype)
    total = deterministic_sum(losses)
    if opts.reduction == "mean":
        total = total / den
    return total.to(out_dtype)
