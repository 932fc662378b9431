"""Autograd glue of every fused backend: gradients computed in forward, handed over in backward.

A fused loss computes d(loss)/d(input) while it computes the loss (one pass over the logits), so
its autograd Function stores the finished gradient tensors in ``ctx`` and its backward only scales
them by ``grad_output``:

    scalar reductions   g <- g * grad_output * post_scale      (skipped when the factor is 1)
    reduction 'none'    g <- g * grad_output, broadcast per sample (the caller shapes it)

The tensors are handed to autograd once, scaled in place: keeping a copy for a second backward
would cost a whole gradient's memory. With ``keep`` (``allow_retain_graph``) they stay in ``ctx``
and backward returns scaled copies instead.
"""

from __future__ import annotations

import torch

from .. import _checks


def stash(ctx, grads: tuple, *, post_scale: torch.Tensor | None = None, keep: bool = False) -> None:
    """Store forward's gradients (None entries for inputs that need none) for `release`.
    post_scale: a factor backward applies besides grad_output (1/den for 16-bit 'mean')."""
    ctx.grads = grads
    ctx.post_scale = post_scale
    ctx.keep = keep


def _is_one(factor: torch.Tensor) -> bool:
    # Reading a CPU scalar costs no device sync; elsewhere the multiply is cheaper than the sync.
    return factor.device.type == "cpu" and factor.numel() == 1 and factor.item() == 1.0


def release(ctx, fn: str, factor: torch.Tensor) -> tuple:
    """The stored gradients times ``factor`` (grad_output, shaped to broadcast; times post_scale).

    A second call raises (through `_checks`) unless the gradients were stashed with ``keep``.
    Each gradient is multiplied in its own dtype, by the factor in float32 (or float64).
    """
    grads = ctx.grads
    if grads is None:
        _checks.fused_gradient_consumed(fn)
    if ctx.post_scale is not None:
        factor = factor * ctx.post_scale
    if not ctx.keep:
        ctx.grads = None  # the tensors now belong to autograd
    one = _is_one(factor)
    out = []
    for g in grads:
        if g is None:
            out.append(None)
        elif one:
            out.append(g.clone() if ctx.keep else g)
        else:
            f = factor.to(torch.float64 if g.dtype == torch.float64 else torch.float32)
            if ctx.keep:
                out.append((g * f).to(g.dtype))
            else:
                out.append(g.mul_(f))
    return tuple(out)
