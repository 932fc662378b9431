"""The fused cross-entropy as one ``torch.library`` custom op per backend that offers it (the
Triton backend: its descriptor's ``compiled_cross_entropy``), for torch.compile.

While torch.compile traces, `_dispatch` would otherwise send cross-entropy to the composite
formulas, which Inductor turns into its own kernels. With this op the graph keeps crossent's
kernel instead: an opaque node (no graph break) whose implementation is cross_entropy.py's forward,
returning the loss *and* the gradient it computed::

    crossent::cross_entropy_<backend>(input, target, weight, normalizer, options)
        -> (loss, grad_input, post_scale)

and whose registered backward multiplies the gradient by grad_output (per sample for 'none'; times
post_scale: 1/den for float16 'mean', else 1), out of place, so that a second backward
(retain_graph) gives the same values. Passes over the logits: forward 1 read + 1 write (as eager),
backward 1 read + 1 write (eager skips it when grad_output is 1; a custom op's backward cannot
modify what its forward saved). Not covered (the composite formulas, as before): reduction 'none'
with a gradient needed for class-probability targets or class weights, ``inplace_backward``, and
second derivatives (AOTAutograd has no double backward).
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from ..common import compute_dtype, output_dtype, reduce
from .cross_entropy import CECall, _as_samples, _precompute, as_nc
from .kernels import RowKernels


def _shapes(input, target, opts):
    """(index, probs views in the kernel's layout, the loss's per-sample shape)."""
    x_nc = as_nc(input)
    if opts.soft:
        out_shape = input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])
        return None, as_nc(target), out_shape
    return _as_samples(target, x_nc), None, target.shape


def make_ce_op(kernels: RowKernels):
    """Register crossent::cross_entropy_<kernels.name>; returns the function that calls it with a
    checked call's arguments (as loops.cross_entropy's)."""

    @torch.library.custom_op(f"crossent::cross_entropy_{kernels.name}", mutates_args=())
    def op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
           normalizer: torch.Tensor | None, options: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = LossOptions.decode(options, normalizer)
        index, probs, out_shape = _shapes(input, target, opts)
        call = CECall(opts, out_shape, output_dtype(input, target, opts), kernels)
        losses, den, grad, post_scale = _precompute(input, index, probs, weight, call)
        loss = reduce(losses, den, opts, out_shape, call.out_dtype)
        acc = compute_dtype(input.dtype)
        ps = post_scale.reshape(()).to(acc) if post_scale is not None else torch.ones((), dtype=acc, device=input.device)
        return loss, grad.view(input.shape), ps

    @op.register_fake
    def _(input, target, weight, normalizer, options):
        opts = LossOptions.decode(options, normalizer)
        _, _, out_shape = _shapes(input, target, opts)
        loss_shape = out_shape if opts.reduction == "none" else ()
        loss = input.new_empty(loss_shape, dtype=output_dtype(input, target, opts))
        return loss, torch.empty_like(input), input.new_empty((), dtype=compute_dtype(input.dtype))

    def setup_context(ctx, inputs, output):
        input, _, _, _, options = inputs
        _, grad, ps = output
        ctx.save_for_backward(grad, ps)
        ctx.reduction = LossOptions.decode(options, inputs[3]).reduction
        ctx.dtype = input.dtype

    def backward(ctx, grad_loss, *_):
        grad, ps = ctx.saved_tensors
        go = grad_loss.to(ps.dtype)
        if ctx.reduction == "none":  # per sample, broadcast along the class dim
            go = go.reshape(grad.shape[:1] + (1,) + grad.shape[2:]) if grad.dim() > 1 else go
        return (grad * (go * ps)).to(ctx.dtype), None, None, None, None

    op.register_autograd(backward, setup_context=setup_context)

    def cross_entropy(input, target, weight, opts: LossOptions):
        normalizer = opts.normalizer if isinstance(opts.normalizer, torch.Tensor) else None
        return op(input, target, weight, normalizer, opts.encode())[0]

    return cross_entropy
