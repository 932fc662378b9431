"""The fused linear cross-entropy as one ``torch.library`` custom op, for torch.compile.

Dynamo cannot trace the chunk loop (Python loops over data-dependent buffers, a precomputed
gradient handed over in backward), and the composite formulas it can trace build the N x V logits
-- the memory this loss exists to avoid. So while torch.compile traces, the scalar reductions
('mean', 'sum') call this op instead: an opaque node in the graph (no graph break) whose
implementation is linear.py's forward, returning the loss *and* the gradients it computed::

    crossent::linear_cross_entropy(input, linear_weight, target, linear_bias, weight, normalizer,
                                   config) -> (loss, grad_input, grad_weight, grad_bias, post_scale)

and whose registered backward multiplies those gradients by grad_output (times post_scale: 1/den
for float16 'mean', else 1), out of place: a second backward (retain_graph) gives the same values,
with no refill needed. Gradients not wanted come back as empty tensors. Memory and FLOPs are the
eager fused path's (linear.py): never the N x V logits. ``config`` carries the options as a string
(custom ops take tensors, numbers and strings only; `encode`), and the name of the row kernels (torch ops or
Triton, `row_kernels.by_name`).

Not covered, and where they go instead (linear.py's entry decides): reduction 'none' (its
backward needs grad_output per token before the weight gradient can be formed) and torch.func
transforms take the composite formulas. A second derivative of a compiled loss is refused by
torch.compile itself (AOTAutograd has no double backward).
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from ..common import compute_dtype, output_dtype, reduce
from . import row_kernels

_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def encode(opts: LossOptions, kernels: row_kernels.RowKernels, want: tuple) -> str:
    """The call's options as the op's ``config`` string (the normalizer tensor travels apart).
    An f-string of Python values (exact: floats by repr), which Dynamo folds into a constant, where
    json.dumps would break the graph."""
    normalizer = opts.normalizer if not isinstance(opts.normalizer, torch.Tensor) else None
    w = "".join("1" if x else "0" for x in want)
    return (f"{opts.ignore_index!r};{opts.reduction};{opts.label_smoothing!r};{opts.z_loss!r};"
            f"{opts.softcap!r};{normalizer!r};{int(opts.soft)};{opts.dtype!s};{opts.chunk_size!r};"
            f"{kernels.name};{w}")


def _num(text: str, kind=float):
    return None if text == "None" else kind(text)


def _decode(config: str, normalizer):
    ii, red, eps, zl, cap, norm, soft, dtype, chunk, kernels, want = config.split(";")
    opts = LossOptions(
        ignore_index=int(ii), reduction=red, label_smoothing=float(eps), z_loss=float(zl),
        softcap=_num(cap), normalizer=normalizer if normalizer is not None else _num(norm),
        soft=soft == "1", dtype=_DTYPES.get(dtype), chunk_size=_num(chunk, int),
    )
    return opts, row_kernels.by_name(kernels), tuple(c == "1" for c in want)


@torch.library.custom_op("crossent::linear_cross_entropy", mutates_args=())
def _op(
    input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
    linear_bias: torch.Tensor | None, weight: torch.Tensor | None, normalizer: torch.Tensor | None,
    config: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import linear  # (linear imports this module)

    opts, kernels, want = _decode(config, normalizer)
    index, probs = (None, target) if opts.soft else (target, None)
    problem = linear._Problem(input, linear_weight, index, probs, linear_bias)
    rows = opts.chunk_size or linear.chunk_rows(
        input.shape[0], input.shape[-1], linear_weight.shape[0], input.dtype, opts, soft=opts.soft,
        class_weight=weight is not None, kernels=kernels,
    )
    losses, den, grads, post_scale = linear._precompute(problem, weight, opts, rows, want, kernels)
    loss = reduce(losses, den, opts, (), output_dtype(input, target, opts))
    acc = compute_dtype(input.dtype)
    # (a fresh empty tensor for each gradient not wanted: outputs of a custom op may not alias)
    gx, gw, gb = (g if g is not None else input.new_empty(0, dtype=acc) for g in grads)
    ps = post_scale.reshape(()).to(acc) if post_scale is not None else torch.ones((), dtype=acc, device=input.device)
    return loss, gx, gw, gb, ps


@_op.register_fake
def _(input, linear_weight, target, linear_bias, weight, normalizer, config):
    opts, _, want = _decode(config, normalizer)
    acc = compute_dtype(input.dtype)
    none = lambda: input.new_empty(0, dtype=acc)
    loss = input.new_empty((), dtype=output_dtype(input, target, opts))
    gx = torch.empty_like(input) if want[0] else none()
    gw = linear_weight.new_empty(linear_weight.shape, dtype=acc) if want[1] else none()
    gb = linear_bias.new_empty(linear_bias.shape, dtype=acc) if want[2] and linear_bias is not None else none()
    return loss, gx, gw, gb, input.new_empty((), dtype=acc)


def _setup_context(ctx, inputs, output):
    input, linear_weight, _, linear_bias, _, _, config = inputs
    _, gx, gw, gb, ps = output
    ctx.save_for_backward(gx, gw, gb, ps)
    ctx.want = tuple(c == "1" for c in config.rsplit(";", 1)[1])
    ctx.dtypes = (input.dtype, linear_weight.dtype, linear_bias.dtype if linear_bias is not None else None)


def _backward(ctx, grad_loss, *_):
    gx, gw, gb, ps = ctx.saved_tensors
    factor = grad_loss.to(ps.dtype) * ps  # (in the compute dtype: float64 or float32)
    out = []
    for g, wanted, dtype in zip((gx, gw, gb), ctx.want, ctx.dtypes):
        out.append((g * factor).to(dtype) if wanted and g.numel() else None)
    gx, gw, gb = out
    return gx, gw, None, gb, None, None, None


torch.library.register_autograd("crossent::linear_cross_entropy", _backward, setup_context=_setup_context)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions,
                         kernels: row_kernels.RowKernels) -> torch.Tensor:
    """The scalar-reduction loss through the op (arguments as linear.linear_cross_entropy's)."""
    want = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    want = want if torch.is_grad_enabled() else (False, False, False)
    normalizer = opts.normalizer if isinstance(opts.normalizer, torch.Tensor) else None
    return _op(input, linear_weight, target, linear_bias, weight, normalizer, encode(opts, kernels, want))[0]
