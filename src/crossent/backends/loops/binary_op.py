"""The fused binary losses as ``torch.library`` custom ops per backend that offers them (the
Triton backend: its descriptor's ``compiled_binary``), for torch.compile, as cross_entropy_op.py
does for cross-entropy.

While torch.compile traces, `_dispatch` would otherwise send the binary losses to the composite
formulas, which Inductor turns into its own kernels. With these ops the graph keeps crossent's
elementwise kernel: an opaque node (no graph break) whose implementation is binary.py's forward,
returning the loss *and* the gradient it computed (of the sum of the per-element losses)::

    crossent::binary_cross_entropy_with_logits_<backend>(input, target, weight, pos_weight, options)
    crossent::binary_cross_entropy_<backend>(input, target, weight, options)
        -> (loss, grad_input)

and whose registered backward multiplies the gradient by grad_output (elementwise for 'none';
divided by the element count for 'mean', as binary.py's backward), out of place, in the
gradient's dtype by a float32 (float64) factor, so that a second backward (retain_graph) gives the
same values. Passes over the input: forward 1 read + 1 write (as eager), backward 1 read + 1
write. Not covered (the composite formulas, as before): a gradient needed for the target, the
weights or pos_weight, and second derivatives (AOTAutograd has no double backward).
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from ..common import binary_output_dtype
from .binary import BCECall
from .kernels import RowKernels


def _forward(input, target, weight, pos_weight, options, logits, kernels):
    call = BCECall(LossOptions.decode(options), logits, kernels)
    grad = torch.empty_like(input)
    total = call.forward(input, target, weight, pos_weight, grad)
    return call.reduce(total, input, target), grad


def _fake(input, target, options, logits):
    opts = LossOptions.decode(options)
    shape = input.shape if opts.reduction == "none" else ()
    return input.new_empty(shape, dtype=binary_output_dtype(input, target, opts, logits)), torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, options = inputs[0], inputs[-1]
    ctx.save_for_backward(output[1])
    ctx.reduction = LossOptions.decode(options).reduction
    ctx.numel = input.numel()


def _input_grad(ctx, grad_loss):
    (grad,) = ctx.saved_tensors
    factor = grad_loss / ctx.numel if ctx.reduction == "mean" else grad_loss
    return (grad * factor.to(torch.float64 if grad.dtype == torch.float64 else torch.float32)).to(grad.dtype)


def make_binary_ops(kernels: RowKernels):
    """Register crossent::binary_cross_entropy[_with_logits]_<kernels.name>; returns the function
    that calls the right one with a checked call's arguments (``pos_weight`` None on
    probabilities)."""
    name = kernels.name

    @torch.library.custom_op(f"crossent::binary_cross_entropy_with_logits_{name}", mutates_args=())
    def with_logits(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                    pos_weight: torch.Tensor | None, options: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _forward(input, target, weight, pos_weight, options, True, kernels)

    @torch.library.custom_op(f"crossent::binary_cross_entropy_{name}", mutates_args=())
    def on_probs(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                 options: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _forward(input, target, weight, None, options, False, kernels)

    with_logits.register_fake(lambda input, target, weight, pos_weight, options: _fake(input, target, options, True))
    on_probs.register_fake(lambda input, target, weight, options: _fake(input, target, options, False))
    with_logits.register_autograd(lambda ctx, g, _: (_input_grad(ctx, g), None, None, None, None),
                                  setup_context=_setup_context)
    on_probs.register_autograd(lambda ctx, g, _: (_input_grad(ctx, g), None, None, None),
                               setup_context=_setup_context)

    def binary(input, target, weight, pos_weight, opts: LossOptions, *, logits: bool):
        if logits:
            return with_logits(input, target, weight, pos_weight, opts.encode())[0]
        return on_probs(input, target, weight, opts.encode())[0]

    return binary
