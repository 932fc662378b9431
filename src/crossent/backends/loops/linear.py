"""Fused linear cross-entropy: the loss of ``F.linear`` + cross-entropy without the logits.

Contract (`crossent.reference.linear_cross_entropy`; x: input (N, D), W: linear_weight (V, D),
b: linear_bias (V,))::

    linear_cross_entropy(x, W, t, b, w, opts) == cross_entropy(F.linear(x, W, b), t, w, **opts)

in value and in the gradients w.r.t. x, W and b, for every option of the row math
(`backends/rows.py`: ignore_index, class weights, label smoothing, class-probability targets,
z_loss, softcap) and every reduction. K-dimensional heads, W of shape (V, d1..dk, D) (torch's
``out_features``), are P = d1*..*dk heads W[:, j] sharing the input: the chunk loop
(linear_chunks.py) runs once per head, the softmax is over V at each (token, head), grad_x sums
over the heads, and 'mean' divides by the count over all of them.

With reduction 'mean' or 'sum' the loss is a scalar, so each token's gradient scale s_i = 1/den
(or 1) is known in forward: the three gradients are finished there and backward only multiplies
them by grad_output (nothing when it is 1). With reduction 'none' s_i is grad_output[i], known only
in backward, and grad_W = sum_i s_i G_i.T x_i cannot be folded earlier; so forward computes the
losses (one mm per chunk) and, in float32/float64 with one head, the last chunk's unscaled G,
kept for backward (linear_kept.py); backward takes that chunk's share with s
applied to the products' small operands and recomputes Z for the chunks before it with s =
grad_output. Saving every chunk's G would be the N x V tensor this module exists to avoid.

Cost. 'mean'/'sum': three matrix products, 6 N D V FLOPs (the floor of any exact method: Z, grad_x
and grad_W each need one), plus ~10 N V elementwise operations. 'none': 6 N D V where N x V fits one
chunk (float32/float64), up to 8 N D V (every chunk's logits but the kept last one computed
twice). Loss only (no gradient needed): 2 N D V.

Memory. Beyond the inputs and the gradients themselves (N D + V D + V), one chunk's buffers: n V
elements of the input dtype for Z, plus what the backend's ce_chunk needs beside them
(`RowKernels.chunk_buffers`); the backend's `chunk_rows` picks n (``chunk_size`` overrides it):
peak extra memory O(n V + V D), never O(N V). With 16-bit inputs the weight and bias gradients are
accumulated in float32 (V D float32) and cast once at the end; the weight gradient's float32
accumulator is narrowed to 16 bits inside the storage of the returned gradient (weight_grad.py),
so it and its 16-bit copy are never alive together: 4 V D bytes at most (2.10 GB at the Llama-3
head, V=128256, D=4096; cast by ``.to()``: 6 V D, 3.15 GB), 2 V D held after backward.

Precision. Products run in the input dtype (bfloat16/float16 matrix products, as F.linear would);
softmax math in float32 (float64 for float64 inputs); the weight and bias gradients accumulate in
float32 across chunks. For float16 inputs with a scalar reduction the stored gradients are unscaled
(O(1) values) and 1/den times grad_output is applied once in backward, so an AMP loss scale
multiplies before anything could underflow. Results are deterministic run to run for a given
chunk size; the chunk size changes the summation order of grad_W (rounding-level differences).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite
from ..common import compute_dtype, output_dtype, reduce, safe_reciprocal
from .kernels import RowKernels
from .linear_chunks import Problem
from .linear_kept import keeps_last_chunk, problem_backward_with_kept, run_keeping_last
from .weight_grad import SplitWeightGrad, narrows


@dataclass(frozen=True)
class LinearCall:
    """One call of the fused linear loss: everything but its tensors.
    rows: tokens per chunk; want: whether (input, weight, bias) need gradients."""

    opts: LossOptions
    rows: int
    out_shape: tuple
    out_dtype: torch.dtype
    want: tuple
    kernels: RowKernels
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)


def precompute(problem: Problem, weight, call: LinearCall, *, split_w: bool = False):
    """Forward's work for a scalar reduction: (per-token losses, 'mean' denominator, gradients,
    post_scale). 1/den is folded into the gradients now (one rounding of a bfloat16 gradient);
    float16 keeps O(1) values, scaled once in backward (an AMP loss scale multiplies before
    anything can underflow). ``split_w``: a 16-bit weight's gradient as a `SplitWeightGrad`."""
    x, opts = problem.x, call.opts
    acc = compute_dtype(x.dtype)
    den = problem.denominator(weight, opts, acc)
    inv_den = safe_reciprocal(den) if den is not None else None
    fold = inv_den is not None and x.dtype != torch.float16
    grads = _grad_buffers(x, problem.linear_weight, problem.linear_bias, call.want, acc, split_w=split_w)
    losses = problem.run(weight, opts, call.rows, call.kernels, scale=inv_den if fold else 1.0, grads=grads)
    return losses, den, grads, None if fold else inv_den


def _grad_buffers(x, weight, bias, want, acc, *, split_w=False):
    """Uninitialised gradient buffers for the wanted inputs (grad_x in x's dtype, the others in
    acc, of the parameters' shapes): the chunk loop writes every element. ``split_w``: the weight's
    as a `SplitWeightGrad` where it is returned in a dtype of half acc's size."""
    want_x, want_w, want_b = want
    dev = x.device
    gx = _memory.empty(x.shape, x.dtype, dev) if want_x else None
    if want_w and split_w and narrows(weight.dtype, acc):
        gw = SplitWeightGrad(weight.shape, weight.dtype, acc, dev)
    else:
        gw = _memory.empty(weight.shape, acc, dev) if want_w else None
    gb = torch.empty(bias.shape, dtype=acc, device=dev) if want_b and bias is not None else None
    return gx, gw, gb


class _LinearCrossEntropyFn(torch.autograd.Function):
    """Autograd glue. Scalar reductions: gradients finished in forward, scaled in backward
    (`backends.autograd`). 'none': losses in forward, everything recomputed in backward with the
    per-token grad_output. Second derivatives and a second backward after the hand-over: the
    composite formulas (`autograd.second_derivative`, `autograd.refill`)."""

    @staticmethod
    def forward(call, input, linear_weight, index, probs, linear_bias, weight):
        problem = Problem(input, linear_weight, index, probs, linear_bias)
        opts = call.opts
        if opts.reduction == "none":
            if keeps_last_chunk(problem, input):  # (G of the last chunk kept for backward)
                losses, kept = run_keeping_last(problem, weight, opts, call.rows, call.kernels, want_w=call.want[1])
                call.handover.put(kept)
            else:
                losses = problem.run(weight, opts, call.rows, call.kernels, scale=1.0, grads=(None, None, None))
            return reduce(losses, None, opts, call.out_shape, call.out_dtype)
        losses, den, grads, post_scale = precompute(problem, weight, call, split_w=True)
        call.handover.put((grads, post_scale))
        return reduce(losses, den, opts, call.out_shape, call.out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, linear_weight, index, probs, linear_bias, weight = inputs
        opts = call.opts
        ctx.call = call
        ctx.dtypes = (linear_weight.dtype, None if linear_bias is None else linear_bias.dtype)
        target = probs if probs is not None else index
        loss = lambda x, w, b: composite.linear_cross_entropy(x, w, target, b, weight, opts)

        def regrad(x, w, b):
            grads, post_scale = precompute(Problem(x, w, index, probs, b), weight, call, split_w=True)[2:]
            return _flatten(ctx, grads), post_scale

        # Held strongly: (N, D) + (V, D) + (V,), no N x V; the weight and bias are parameters
        # anyway, and an input made inline (h.reshape(-1, D)) would otherwise be gone.
        autograd.remember(ctx, "linear_cross_entropy", (input, linear_weight, linear_bias), loss,
                          regrad, weak=False)
        if opts.reduction == "none":
            ctx.save_for_backward(input, linear_weight, index, probs, linear_bias, weight)
            ctx.grads = None
            ctx.kept = call.handover.take()  # the last chunk's G; None where `keeps_last_chunk` said no
            ctx.keeps = ctx.kept is not None
        else:
            grads, post_scale = call.handover.take()
            autograd.stash(ctx, _flatten(ctx, grads), post_scale=post_scale, keep=opts.allow_retain_graph,
                           scale_grad=call.kernels.scale_grad)

    @staticmethod
    def backward(ctx, grad_out):
        call = ctx.call
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated
            gx, gw, gb = autograd.second_derivative(ctx, grad_out, call.want)
            return None, gx, gw, None, None, gb, None
        if call.opts.reduction == "none":
            input, linear_weight, index, probs, linear_bias, weight = ctx.saved_tensors
            acc = compute_dtype(input.dtype)
            problem = Problem(input, linear_weight, index, probs, linear_bias)
            grads = _grad_buffers(input, linear_weight, linear_bias, call.want, acc, split_w=True)
            scale = grad_out.reshape(input.shape[0], problem.heads).to(acc)  # (N, P)
            # (the kept buffer is reused below and released: a repeated backward recomputes it)
            kept, ctx.kept = ctx.kept, None
            if ctx.keeps:
                problem_backward_with_kept(problem, weight, call.opts, call.rows, call.kernels, kept, scale=scale,
                                           grads=grads)
            else:
                problem.run(weight, call.opts, call.rows, call.kernels, scale=scale, grads=grads)
            gx, gw, gb = grads
            gw = gw.finish() if isinstance(gw, SplitWeightGrad) else gw
        else:
            gx, gw, gb = _unflatten(ctx, autograd.release(ctx, grad_out))
        w_dtype, b_dtype = ctx.dtypes
        gw = gw.to(w_dtype) if gw is not None else None
        gb = gb.to(b_dtype) if gb is not None else None
        return None, gx, gw, None, None, gb, None


def _flatten(ctx, grads) -> tuple:
    """(grad_x, grad_b, *grad_W's tensors): what `autograd.release` scales, one tensor each; a
    `SplitWeightGrad` is kept in ctx.split for `_unflatten`."""
    gx, gw, gb = grads
    ctx.split = gw if isinstance(gw, SplitWeightGrad) else None
    return (gx, gb) + (gw.tensors() if ctx.split is not None else (gw,))


def _unflatten(ctx, grads) -> tuple:
    """(grad_x, grad_W, grad_b) from `release`'s scaled `_flatten` tuple: a split grad_W finished
    in the weight's dtype (in its own storage when the tensors were handed over, else copied)."""
    gx, gb, *gw = grads
    if ctx.split is None:
        return gx, gw[0], gb
    split = ctx.split
    if ctx.grads is None:  # handed over: nothing may use the blocks again
        ctx.split = None
    return gx, split.finish(tuple(gw)), gb


def split_target(target, opts: LossOptions):
    """(class indices or None, probabilities or None)."""
    return (None, target) if opts.soft else (target, None)


def linear_call(input, linear_weight, target, weight, opts: LossOptions, kernels: RowKernels, *,
                want) -> LinearCall:
    """The call object of a checked call: chunk rows by the backend's rule unless given."""
    n, v = input.shape[0], linear_weight.shape[0]
    rows = opts.chunk_size or kernels.chunk_rows(
        n, input.shape[-1], v, input.dtype, opts, soft=opts.soft, class_weight=weight is not None)
    out_shape = (n,) + tuple(linear_weight.shape[1:-1])
    return LinearCall(opts, rows, out_shape, output_dtype(input, target, opts), want, kernels)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions, *,
                         kernels: RowKernels) -> torch.Tensor:
    """Backend entry (checked arguments): input (N, D), linear_weight (V, *out, D), target (N, *out)
    class indices or (N, V, *out) probabilities (``opts.soft``), linear_bias (V, *out) or None,
    weight (V,) class weights or None. Returns (N, *out) for 'none', else a scalar."""
    index, probs = split_target(target, opts)
    params = (input, linear_weight, linear_bias)
    want = tuple(t is not None and t.requires_grad for t in params)
    if torch.is_grad_enabled() and any(want):
        call = linear_call(input, linear_weight, target, weight, opts, kernels, want=want)
        return _LinearCrossEntropyFn.apply(call, input, linear_weight, index, probs, linear_bias, weight)
    # Evaluation: losses only, one product per chunk.
    call = linear_call(input, linear_weight, target, weight, opts, kernels, want=(False,) * 3)
    problem = Problem(input, linear_weight, index, probs, linear_bias)
    losses = problem.run(weight, opts, call.rows, kernels, scale=1.0, grads=(None, None, None))
    den = problem.denominator(weight, opts, compute_dtype(input.dtype))
    return reduce(losses, den, opts, call.out_shape, call.out_dtype)
