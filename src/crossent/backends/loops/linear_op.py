"""The fused linear cross-entropy as one ``torch.library`` custom op per fused backend, for
torch.compile.

Dynamo cannot trace the chunk loop (Python loops over data-dependent buffers, a precomputed
gradient handed over in backward), and the composite formulas it can trace build the N x V logits
-- the memory this loss exists to avoid. So while torch.compile traces, `_dispatch` sends the
scalar reductions ('mean', 'sum') to this op instead: an opaque node in the graph (no graph break)
whose implementation is linear.py's forward, returning the loss *and* the gradients it computed::

    crossent::linear_cross_entropy_<backend>(input, linear_weight, target, linear_bias, weight,
        normalizer, options, want) -> (loss, grad_input, grad_weight, grad_bias, post_scale)

and whose registered backward multiplies those gradients by grad_output (times post_scale: 1/den
for float16 'mean', else 1), out of place: a second backward (retain_graph) gives the same values,
with no refill needed. Gradients not wanted come back as empty tensors. Memory and FLOPs are the
eager fused path's (linear.py): never the N x V logits. ``options`` is `LossOptions.encode()` (a
tensor normalizer travels apart); ``want`` says which of (input, weight, bias) need gradients.

Not covered, and where they go instead (`_dispatch` decides): reduction 'none' (its backward needs
grad_output per token before the weight gradient can be formed) and torch.func transforms take the
composite formulas. A second derivative of a compiled loss is refused by torch.compile itself
(AOTAutograd has no double backward).
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from ..common import compute_dtype, output_dtype, reduce
from .kernels import RowKernels
from .linear import linear_call, precompute, split_target
from .linear_chunks import Problem


def _want(text: str) -> tuple:
    return tuple(c == "1" for c in text)


def make_op(kernels: RowKernels):
    """Register crossent::linear_cross_entropy_<kernels.name>; returns the function that calls it
    with a checked call's arguments (as linear.linear_cross_entropy's, for 'mean'/'sum')."""

    @torch.library.custom_op(f"crossent::linear_cross_entropy_{kernels.name}", mutates_args=())
    def op(
        input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
        linear_bias: torch.Tensor | None, weight: torch.Tensor | None, normalizer: torch.Tensor | None,
        options: str, want: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = LossOptions.decode(options, normalizer)
        call = linear_call(input, linear_weight, target, weight, opts, kernels, want=_want(want))
        losses, den, grads, post_scale = precompute(Problem(input, linear_weight, *split_target(target, opts),
                                                            linear_bias), weight, call)
        loss = reduce(losses, den, opts, (), call.out_dtype)
        acc = compute_dtype(input.dtype)
        # (a fresh empty tensor for each gradient not wanted: outputs of a custom op may not alias)
        gx, gw, gb = (g if g is not None else input.new_empty(0, dtype=acc) for g in grads)
        ps = post_scale.reshape(()).to(acc) if post_scale is not None else torch.ones((), dtype=acc, device=input.device)
        return loss, gx, gw, gb, ps

    @op.register_fake
    def _(input, linear_weight, target, linear_bias, weight, normalizer, options, want):
        opts = LossOptions.decode(options, normalizer)
        want = _want(want)
        acc = compute_dtype(input.dtype)
        none = lambda: input.new_empty(0, dtype=acc)
        loss = input.new_empty((), dtype=output_dtype(input, target, opts))
        gx = torch.empty_like(input) if want[0] else none()
        gw = linear_weight.new_empty(linear_weight.shape, dtype=acc) if want[1] else none()
        gb = linear_bias.new_empty(linear_bias.shape, dtype=acc) if want[2] and linear_bias is not None else none()
        return loss, gx, gw, gb, input.new_empty((), dtype=acc)

    def setup_context(ctx, inputs, output):
        input, linear_weight, _, linear_bias, _, _, _, want = inputs
        _, gx, gw, gb, ps = output
        ctx.save_for_backward(gx, gw, gb, ps)
        ctx.want = _want(want)
        ctx.dtypes = (input.dtype, linear_weight.dtype, linear_bias.dtype if linear_bias is not None else None)

    def backward(ctx, grad_loss, *_):
        gx, gw, gb, ps = ctx.saved_tensors
        factor = grad_loss.to(ps.dtype) * ps  # (in the compute dtype: float64 or float32)
        out = [(g * factor).to(dtype) if wanted and g.numel() else None
               for g, wanted, dtype in zip((gx, gw, gb), ctx.want, ctx.dtypes)]
        return out[0], out[1], None, out[2], None, None, None, None

    op.register_autograd(backward, setup_context=setup_context)

    def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
        want = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
        want = want if torch.is_grad_enabled() else (False, False, False)
        normalizer = opts.normalizer if isinstance(opts.normalizer, torch.Tensor) else None
        code = "".join(["1" if w else "0" for w in want])
        return op(input, linear_weight, target, linear_bias, weight, normalizer, opts.encode(), code)[0]

    return linear_cross_entropy
