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

import weakref

import torch

from .. import _checks


class Handover:
    """Tensors a Function's forward computed for its setup_context: forward puts them, setup_context
    takes them (once). Not outputs of the Function: an output costs autograd bookkeeping (measured:
    +43 MiB of peak in the linear loss at 2048 x 512 x 128256). One lives in each call object."""

    __slots__ = ("_value",)

    def __init__(self):
        self._value = None

    def put(self, value) -> None:
        self._value = value

    def take(self):
        value, self._value = self._value, None
        return value


def stash(ctx, grads: tuple, *, post_scale: torch.Tensor | None = None, keep: bool = False) -> None:
    """Store forward's gradients (None entries for inputs that need none) for `release`.
    post_scale: a factor backward applies besides grad_output (1/den for 16-bit 'mean')."""
    ctx.grads = grads
    ctx.post_scale = post_scale
    ctx.keep = keep


def _is_one(factor: torch.Tensor) -> bool:
    # Reading a CPU scalar costs no device sync; elsewhere the multiply is cheaper than the sync.
    return factor.device.type == "cpu" and factor.numel() == 1 and factor.item() == 1.0


def release(ctx, factor: torch.Tensor) -> tuple:
    """The stored gradients times ``factor`` (grad_output, shaped to broadcast; times post_scale).

    They are handed over (a later call refills them, `refill`) unless stashed with ``keep``.
    Each gradient is multiplied in its own dtype, by the factor in float32 (or float64).
    """
    refill(ctx)
    grads = ctx.grads
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


# ---------------------------------------------------------------- recomputing the gradient
#
# Two cases cannot use the precomputed gradient: a second derivative (backward runs with
# create_graph=True, so the gradient must itself be differentiable: `second_derivative` recomputes
# it through the composite formulas, backends/composite.py, whose autograd graph gives exact higher
# derivatives) and a second backward after the gradient was handed over (retain_graph=True:
# `refill` runs forward's kernel again, so every backward gives the same bits). The inputs are
# held by weak references only: keeping the logits alive until backward would cost the N x C memory the fused path exists to save, and where the caller still
# holds them (most training loops do; any tensor another autograd node saved does too) the weak
# reference resolves. If they are gone (or were modified in place), `_checks` says so and names
# the remedy.


def remember(ctx, fn: str, inputs: tuple, loss, regrad, *, weak: bool = True) -> None:
    """What a later backward may need: ``loss(*inputs)`` gives forward's output through
    differentiable ops (for `second_derivative`); ``regrad(*inputs)`` gives forward's (gradients,
    post_scale) again, bit for bit (for `refill`). ``inputs`` (tensors or None) are held weakly
    (``weak=False``: strongly, where they are small beside what the loss saves -- the linear
    loss's (N, D) input), with their versions now."""
    ctx.fn = fn
    hold = weakref.ref if weak else (lambda t: lambda: t)
    ctx.refs = tuple(hold(t) if t is not None else None for t in inputs)
    ctx.versions = tuple(t._version if t is not None else None for t in inputs)
    ctx.loss = loss
    ctx.regrad = regrad


def refill(ctx) -> None:
    """A second backward (retain_graph=True) after the gradients were handed over: compute them
    again with forward's own kernel (the same bits as the first time), ready for `release`."""
    if ctx.grads is None:
        ctx.grads, ctx.post_scale = ctx.regrad(*_inputs(ctx))


def _inputs(ctx) -> list:
    inputs = []
    for ref, version in zip(ctx.refs, ctx.versions):
        if ref is None:
            inputs.append(None)
            continue
        t = ref()
        if t is None:
            _checks.recompute_inputs_gone(ctx.fn)
        if t._version != version:
            _checks.recompute_inputs_modified(ctx.fn)
        inputs.append(t)
    return inputs


def second_derivative(ctx, grad_out: torch.Tensor, needs: tuple) -> tuple:
    """Backward with create_graph=True: the gradients w.r.t. forward's inputs (None where ``needs``
    is False), recomputed through the composite formulas with a graph through the inputs' own
    history, so that they can be differentiated again."""
    inputs = _inputs(ctx)
    ctx.grads = None  # (not needed any more: free them now)
    with torch.enable_grad():
        out = ctx.loss(*inputs)
        wanted = [t for t, n in zip(inputs, needs) if n and t is not None]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = []
    for t, n in zip(inputs, needs):
        g = next(grads) if n and t is not None else None
        result.append(torch.zeros_like(t) if g is None and n and t is not None else g)
    return tuple(result)


def input_gradient(ctx, grad_out: torch.Tensor, factor) -> torch.Tensor:
    """backward of a fused loss with one differentiable input, the logits (the Function's second
    argument, after its call object): the gradient with a graph under create_graph=True, else the
    stored one (refilled for a second backward) times ``factor(grad_out)``."""
    if torch.is_grad_enabled():
        return second_derivative(ctx, grad_out, ctx.needs_input_grad[1:2])[0]
    return release(ctx, factor(grad_out))[0]
