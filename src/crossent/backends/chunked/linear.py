"""Fused linear cross-entropy in plain PyTorch: the loss of ``F.linear`` + cross-entropy without logits.

Contract (`crossent.reference.linear_cross_entropy`; x: input (N, D), W: linear_weight (V, D),
b: linear_bias (V,))::

    linear_cross_entropy(x, W, t, b, w, opts) == cross_entropy(F.linear(x, W, b), t, w, **opts)

in value and in the gradients w.r.t. x, W and b, for every option of `ce_chunk` (ignore_index,
class weights, label smoothing, class-probability targets, z_loss, softcap) and every reduction.
K-dimensional heads, W of shape (V, d1..dk, D) (torch's ``out_features``), are P = d1*..*dk
heads W[:, j] sharing the input: the loop below runs once per head, the softmax is over V at each
(token, head), grad_x sums over the heads, and 'mean' divides by the count over all of them.

Algorithm. The N tokens are cut into chunks of n rows. Per chunk (shapes in brackets)::

    Z = x_c @ W.T (+ b)              [n, V]  one mm into a buffer reused by every chunk, computed
                                             as Z.T = W @ x_c.T into a (V, n) buffer (see below)
    G = d(sum_i s_i l_i)/dZ          [n, V]  ce_chunk, in place over Z (loss and lse per row too)
    grad_x[c]  = G @ W               [n, D]  mm straight into the rows of the returned gradient
    grad_W    += G.T @ x_c           [V, D]  addmm into the returned gradient
    grad_b    += G.sum(0)            [V]

where s_i is the per-token gradient scale. With reduction 'mean' or 'sum' the loss is a scalar, so
s_i = 1/den (or 1) is known in forward: the three gradients are finished there and backward only
multiplies them by grad_output (nothing when it is 1). With reduction 'none' s_i is grad_output[i],
known only in backward, and grad_W = sum_i s_i G_i.T x_i cannot be folded earlier; so forward
computes the losses alone (one mm per chunk) and backward recomputes Z and runs the loop above with
s = grad_output. Saving G instead would be the N x V tensor this module exists to avoid.

Cost. 'mean'/'sum': three matrix products, 6 N D V FLOPs (the floor of any exact method: Z, grad_x
and grad_W each need one), plus ~10 N V elementwise operations. 'none': 8 N D V (the logits are
computed twice). Loss only (no gradient needed): 2 N D V.

Layout. With class indices Z lives transposed in memory (a (V, n) buffer read through its (n, V)
view; probability targets keep it row-major, like themselves): MKL then
packs the big operand W in panels once per product and streams the small x_c, and the chunked
products run at the speed of the full-size ones (x_c @ W.T into a row-major (n, V) buffer ran
~15-20% slower at n = 400-1024, D=512, V=128256). Chunks are a multiple of 8 rows (n = 410 or
500 ran ~40% slower). ce_chunk's row reductions then run over a strided class dimension, which
costs it ~10% more than on contiguous rows; the elementwise softmax is ~7% of the total.
Buffers are fresh per call and advised to use huge pages (backends/_memory.py); grad_W is written
by the first chunk's product, not zero-filled.

Memory. Beyond the inputs and the gradients themselves (N D + V D + V), one chunk's buffers:
n V elements of the input dtype for Z, plus n V float32 for G with 16-bit inputs, plus n V float32
for tanh under softcap, plus the temporaries ce_chunk makes for soft targets and for label smoothing
with class weights. `chunk_rows` picks n so that these take at most 7/8 of the bytes of the
float32 weight gradient (n = 7D/8 in float32; at least 16 MiB; ``chunk_size`` overrides n): peak
extra memory O(n V + V D) = O(V D), under twice the weight gradient, never O(N V). With 16-bit inputs the
weight and bias gradients are accumulated in float32 (V D float32) and cast once at the end, and
each chunk's G.T @ x_c lands in a reused (V, D) buffer of the input dtype before being added.

Precision. Products run in the input dtype (bfloat16/float16 matrix products, as F.linear would);
softmax math in float32 (float64 for float64 inputs); the weight and bias gradients accumulate in
float32 across chunks. For float16 inputs with a scalar reduction the stored gradients are unscaled
(O(1) values) and 1/den times grad_output is applied once in backward, so an AMP loss scale
multiplies before anything could underflow. Results are deterministic run to run for a given
chunk size; the chunk size changes the summation order of grad_W (rounding-level differences).
"""

from __future__ import annotations

import math

import torch

from ..._options import LossOptions
from .. import _memory, autograd, composite
from ..common import (
    compute_dtype,
    deterministic_sum,
    mean_denominator,
    output_dtype,
    reduce,
    safe_reciprocal,
)
from . import linear_op
from .kernel import ChunkTarget
from .row_kernels import TORCH_OPS, RowKernels

_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

# The chunk's buffers (logits, gradient, temporaries) may take 7/8 of the bytes of the float32
# weight gradient the call returns anyway, and at least MIN_BUDGET_BYTES. In float32 that is 7D/8
# rows whatever V is (448 at D=512), so the whole peak -- grad_W, grad_x, the chunk -- stays under
# twice the weight gradient while N <= V/8. (torch 2.13's chunked F.linear_cross_entropy holds a
# second V x D buffer beside its small chunks: about the same bound, reached.)
# Why not fewer rows: every chunk streams W twice (the two products with W) and grad_W once
# (addmm's read-modify-write), 3 * 4 * V * D bytes, while its products do 6 * n * D * V FLOPs;
# on a CPU whose bandwidth is shared this per-chunk traffic is what costs. Measured side by side
# at N=2048, D=512, V=128256 on the 2-core CPU of docs/PERFORMANCE.md, the three chunked products
# over the three full-size ones (transposed logits, see the module docstring): 384 rows 0.98x,
# 408 1.02x, 416 1.05x, 448 1.04-1.07x, 456 1.00x, 464 1.01x, 512 1.03x (run-to-run noise ~5%);
# with row-major logits 410 rows were 1.09x and 448 1.11x. The floor keeps small layers (D*V tiny)
# from running in slivers of a few rows.
MIN_BUDGET_BYTES = 16 << 20
# Chunks of a multiple of 8 rows: the transposed product W @ x_c.T (see _chunk_loop) ran at
# full-size speed for r = 384, 408, ..., 512 and ~40% slower for r = 410 or 500 (MKL, AVX2).
ROW_MULTIPLE = 8
# Vocabulary rows per slice of the 16-bit weight-gradient product with lean (GPU) kernels: 8192 x D
# 16-bit values (64 MiB at D=4096) instead of V x D; each slice is still a large product.
PART_ROWS = 8192


def chunk_rows(
    n: int,
    num_features: int,
    num_classes: int,
    dtype: torch.dtype,
    opts: LossOptions,
    *,
    soft: bool = False,
    class_weight: bool = False,
    budget_bytes: int | None = None,
    kernels: RowKernels = TORCH_OPS,
) -> int:
    """Rows per chunk: as many as fit in the budget, then balanced so the last chunk is not tiny.

    budget_bytes defaults to max(MIN_BUDGET_BYTES, 7/8 * V * D * 4) (float32; 8 for float64).
    Bytes per row: V times the logits (input dtype), the float32 gradient of 16-bit inputs, the tanh
    buffer of softcap, and ce_chunk's row-sized temporaries (soft targets: t*z and t*w or the float32
    copy of 16-bit probabilities; label smoothing with class weights: z*w).
    """
    acc = compute_dtype(dtype)
    a = torch.empty((), dtype=acc).element_size()
    if budget_bytes is None and kernels.lean_chunks:
        # GPU (Triton): a quarter of the weight gradient in the input dtype -- at the Llama-3 head
        # (V=128256, D=4096, bfloat16) 1024 rows, 256 MiB, a product still large enough for
        # cuBLAS to run near its peak (a design choice: not measured, no GPU was available).
        budget_bytes = max(MIN_BUDGET_BYTES, num_classes * num_features * torch.empty((), dtype=dtype).element_size() // 4)
    elif budget_bytes is None:
        budget_bytes = max(MIN_BUDGET_BYTES, num_classes * num_features * a * 7 // 8)
    per_elem = torch.empty((), dtype=dtype).element_size()
    if dtype != acc and not kernels.grad_in_input_dtype:
        per_elem += a
    if not kernels.lean_chunks:
        if opts.softcap is not None:
            per_elem += a
        if soft:
            per_elem += 2 * a + (a if class_weight or opts.label_smoothing > 0.0 else 0)
        elif class_weight and opts.label_smoothing > 0.0:
            per_elem += a
    rows = max(1, budget_bytes // max(1, per_elem * num_classes))
    if rows >= n:
        return max(n, 1)
    if rows >= ROW_MULTIPLE:
        rows -= rows % ROW_MULTIPLE
    chunks = math.ceil(n / rows)
    balanced = math.ceil(n / chunks)
    return min(rows, -(-balanced // ROW_MULTIPLE) * ROW_MULTIPLE)



def _chunk_loop(x, weight, bias, index, probs, class_weight, opts, rows, kernels, *, scale, grads,
                add_x=False):
    """One pass over the token chunks of one head; returns per-token losses (N,), compute dtype.

    x (N, D), weight (V, D) (any strides), bias (V,) or None; index (N,) int64 or probs (N, V).
    scale: a number or a 0-d tensor, or per-token (N,): the factor of each token's gradient.
    grads: (grad_x (N, D) input dtype, grad_W (V, D) compute dtype, grad_b (V,) compute dtype),
           each None when not wanted, uninitialised: the loop writes grad_x rows (adds to them with
           ``add_x``), and the first chunk writes grad_W and grad_b (no zero-fill pass), later
           chunks add to them.
    """
    n, d = x.shape
    v = weight.shape[0]
    dt = x.dtype
    acc = compute_dtype(dt)
    gx, gw, gb = grads
    cw = class_weight.to(acc) if class_weight is not None else None
    cw_sum = deterministic_sum(cw) if cw is not None else None
    losses = torch.empty(n, dtype=acc, device=x.device)
    if n == 0:
        for t in (gw, gb):
            if t is not None:
                t.zero_()
        return losses
    size = min(rows, n) * v
    dev = x.device
    z_buf = _memory.empty(size, dt, dev)  # logits, then the gradient in dt
    # 16-bit: ce_chunk's float32 gradient. A gradient is always asked for, even for a loss-only
    # pass: written in place over the logits it costs two elementwise passes and no extra buffer.
    g_buf = _memory.empty(size, acc, dev) if dt != acc and not kernels.grad_in_input_dtype else None
    lean = kernels.lean_chunks
    tanh_buf = _memory.empty(size, acc, dev) if opts.softcap is not None and not lean else None
    # 16-bit: each chunk's G.T @ x_c is rounded into gw_part and added to the float32 grad_W, in
    # slices of PART_ROWS vocabulary rows where the kernels are lean (a (V, D) 16-bit buffer
    # would be most of a GPU's extra memory).
    part_rows = min(v, PART_ROWS) if lean else v
    gw_part = _memory.empty((part_rows, d), dt, dev) if gw is not None and dt != acc else None
    per_token = isinstance(scale, torch.Tensor) and scale.dim() > 0
    row_major = probs is not None or kernels.row_major_logits
    want_grad = any(t is not None for t in grads)
    w_t = weight.t()  # (D, V), a view: BLAS reads it transposed

    def chunk_view(buf, r, v):  # (r, V): row-major, or a (V, r) buffer seen transposed
        return buf[: r * v].view(r, v) if row_major else buf[: r * v].view(v, r).t()

    for i in range(0, n, rows):
        j = min(i + rows, n)
        r = j - i
        xc = x[i:j]  # (r, D)
        # Class indices: the chunk's logits are computed transposed, Z.T = W @ x_c.T into a
        # (V, r) buffer, and used through the (r, V) view z = Z.T.t() (the module docstring says
        # why). Probability targets keep row-major logits: their (r, V) products with the
        # row-major probabilities would otherwise mix layouts, which cost more than it saves.
        z = chunk_view(z_buf, r, v)
        if bias is None:
            torch.mm(xc, w_t, out=z) if row_major else torch.mm(weight, xc.t(), out=z.t())
        elif row_major:
            torch.addmm(bias, xc, w_t, out=z)
        else:
            torch.addmm(bias.unsqueeze(1), weight, xc.t(), out=z.t())
        g = z if g_buf is None else chunk_view(g_buf, r, v)
        th = chunk_view(tanh_buf, r, v) if tanh_buf is not None else None
        target = ChunkTarget(
            index=index[i:j] if index is not None else None,
            probs=probs[i:j] if probs is not None else None,
        )
        # (A loss-only pass still asks torch ops for the gradient: written in place over the
        # logits it costs two elementwise passes and no buffer. Triton's kernel skips it.)
        losses[i:j], _ = kernels.ce_chunk(
            z, target, cw, cw_sum, opts, grad=g if want_grad or not lean else None,
            scale=scale[i:j] if per_token else scale, tanh_work=th,
        )
        first = i == 0
        if gb is not None:  # from the compute-dtype gradient
            if first:
                torch.sum(g, 0, dtype=gb.dtype, out=gb)
            else:
                gb.add_(g.sum(0, dtype=gb.dtype))
        if g is not z and (gx is not None or gw is not None):
            z.copy_(g)  # the products run in the input dtype
        if gx is not None:
            if add_x:
                gx[i:j].addmm_(z, weight)
            else:
                torch.mm(z, weight, out=gx[i:j])
        if gw is not None:
            if gw_part is None:
                if first:
                    torch.mm(z.t(), xc, out=gw)
                else:
                    gw.addmm_(z.t(), xc)
            else:  # no mixed-dtype addmm on every device: round the chunk's product, add in fp32
                for v0 in range(0, v, part_rows):
                    v1 = min(v0 + part_rows, v)
                    part = gw_part[: v1 - v0]
                    torch.mm(z[:, v0:v1].t(), xc, out=part)
                    if first:
                        gw[v0:v1].copy_(part)
                    else:
                        gw[v0:v1].add_(part)
    return losses


class _Problem:
    """The call's tensors cut into P heads: views, no copies (K-dim weights of any layout are
    reshaped once). P = 1 for the usual (V, D) weight."""

    def __init__(self, input, linear_weight, index, probs, linear_bias):
        v, d = linear_weight.shape[0], linear_weight.shape[-1]
        self.heads = math.prod(linear_weight.shape[1:-1])
        self.x = input  # (N, D)
        self.linear_weight, self.linear_bias = linear_weight, linear_bias  # as given
        self.w = linear_weight.reshape(v, self.heads, d)  # (V, P, D)
        self.b = linear_bias.reshape(v, self.heads) if linear_bias is not None else None
        n = input.shape[0]
        self.index = index.reshape(n, self.heads) if index is not None else None  # (N, P)
        self.probs = probs.reshape(n, v, self.heads) if probs is not None else None  # (N, V, P)

    def head(self, j):
        """(weight (V, D), bias (V,), index (N,), probs (N, V)) of head j."""
        cut = lambda t, *i: t[i] if t is not None else None
        every = slice(None)
        return (
            self.w[:, j], cut(self.b, every, j), cut(self.index, every, j),
            cut(self.probs, every, every, j),
        )

    def denominator(self, class_weight, opts, acc):
        """'mean''s denominator over every (token, head), as cross_entropy's; None otherwise."""
        if opts.reduction != "mean":
            return None
        samples = self.x.shape[0] * self.heads
        return mean_denominator(self.index, class_weight, opts, samples, acc, self.x.device)

    def run(self, class_weight, opts, rows, kernels, *, scale, grads):
        """All heads; per-(token, head) losses (N, P). scale: a number, a 0-d tensor or (N, P)."""
        gx, gw, gb = grads
        gw3 = gw.view(self.w.shape) if gw is not None else None
        gb2 = gb.view(self.b.shape) if gb is not None else None
        per_token = isinstance(scale, torch.Tensor) and scale.dim() > 0
        out = []
        for j in range(self.heads):
            w, b, index, probs = self.head(j)
            out.append(_chunk_loop(
                self.x, w, b, index, probs, class_weight, opts, rows, kernels,
                scale=scale[:, j] if per_token else scale,
                grads=(gx, gw3[:, j] if gw3 is not None else None, gb2[:, j] if gb2 is not None else None),
                add_x=j > 0,
            ))
        return torch.stack(out, 1) if self.heads > 1 else out[0].unsqueeze(1)


def _precompute(problem, weight, opts, rows, want, kernels):
    """Forward's work for a scalar reduction: (per-token losses, 'mean' denominator, gradients,
    post_scale). 1/den is folded into the gradients now (one rounding of a bfloat16 gradient);
    float16 keeps O(1) values, scaled once in backward (an AMP loss scale multiplies before
    anything can underflow)."""
    x = problem.x
    acc = compute_dtype(x.dtype)
    den = problem.denominator(weight, opts, acc)
    inv_den = safe_reciprocal(den) if den is not None else None
    fold = inv_den is not None and x.dtype != torch.float16
    grads = _grad_buffers(x, problem.linear_weight, problem.linear_bias, want, acc)
    losses = problem.run(weight, opts, rows, kernels, scale=inv_den if fold else 1.0, grads=grads)
    return losses, den, grads, None if fold else inv_den


def _grad_buffers(x, weight, bias, want, acc):
    """Uninitialised gradient buffers for the wanted inputs (grad_x in x's dtype, the others in
    acc, of the parameters' shapes): `_chunk_loop` writes every element."""
    want_x, want_w, want_b = want
    dev = x.device
    gx = _memory.empty(x.shape, x.dtype, dev) if want_x else None
    gw = _memory.empty(weight.shape, acc, dev) if want_w else None
    gb = torch.empty(bias.shape, dtype=acc, device=dev) if want_b and bias is not None else None
    return gx, gw, gb


class _LinearCrossEntropyFn(torch.autograd.Function):
    """Autograd glue. Scalar reductions: gradients finished in forward, scaled in backward
    (`backends.autograd`). 'none': losses in forward, everything recomputed in backward with the
    per-token grad_output. Second derivatives and a second backward after the hand-over: the
    composite formulas (`autograd.recompute`)."""

    @staticmethod
    def forward(input, linear_weight, index, probs, linear_bias, weight, opts, rows, out_shape,
                out_dtype, want, kernels, box):
        problem = _Problem(input, linear_weight, index, probs, linear_bias)
        if opts.reduction == "none":
            losses = problem.run(weight, opts, rows, kernels, scale=1.0, grads=(None, None, None))
            return reduce(losses, None, opts, out_shape, out_dtype)
        losses, den, grads, post_scale = _precompute(problem, weight, opts, rows, want, kernels)
        box.extend((grads, post_scale))  # for setup_context (see cross_entropy.py)
        return reduce(losses, den, opts, out_shape, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, linear_weight, index, probs, linear_bias, weight, opts, rows, _, _, want, kernels, box = inputs
        ctx.meta = (linear_weight.dtype, None if linear_bias is None else linear_bias.dtype, opts, rows,
                    want, kernels)
        target = probs if probs is not None else index
        loss = lambda x, w, b: composite.linear_cross_entropy(x, w, target, b, weight, opts)
        def regrad(x, w, b):
            problem = _Problem(x, w, index, probs, b)
            return _precompute(problem, weight, opts, rows, want, kernels)[2:]

        # Held strongly: (N, D) + (V, D) + (V,), no N x V; the weight and bias are parameters
        # anyway, and an input made inline (h.reshape(-1, D)) would otherwise be gone.
        autograd.remember(ctx, "linear_cross_entropy", (input, linear_weight, linear_bias), loss,
                          regrad, weak=False)
        if opts.reduction == "none":
            ctx.save_for_backward(input, linear_weight, index, probs, linear_bias, weight)
            ctx.grads = None
        else:
            grads, post_scale = box
            box.clear()
            autograd.stash(ctx, grads, post_scale=post_scale, keep=opts.allow_retain_graph)

    @staticmethod
    def backward(ctx, grad_out):
        w_dtype, b_dtype, opts, rows, want, kernels = ctx.meta
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated
            gx, gw, gb = autograd.second_derivative(ctx, grad_out, want)
            return gx, gw, None, None, gb, None, None, None, None, None, None, None, None
        if opts.reduction == "none":
            input, linear_weight, index, probs, linear_bias, weight = ctx.saved_tensors
            acc = compute_dtype(input.dtype)
            problem = _Problem(input, linear_weight, index, probs, linear_bias)
            grads = _grad_buffers(input, linear_weight, linear_bias, want, acc)
            scale = grad_out.reshape(input.shape[0], problem.heads).to(acc)  # (N, P)
            problem.run(weight, opts, rows, kernels, scale=scale, grads=grads)
        else:
            grads = autograd.release(ctx, grad_out)
        gx, gw, gb = grads
        gw = gw.to(w_dtype) if gw is not None else None
        gb = gb.to(b_dtype) if gb is not None else None
        return gx, gw, None, None, gb, None, None, None, None, None, None, None, None


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions, *,
                         kernels: RowKernels = TORCH_OPS) -> torch.Tensor:
    """Backend entry (checked arguments): input (N, D), linear_weight (V, *out, D), target (N, *out)
    class indices or (N, V, *out) probabilities (``opts.soft``), linear_bias (V, *out) or None,
    weight (V,) class weights or None. Returns (N, *out) for 'none', else a scalar."""
    if _compiling() and opts.reduction != "none":
        # torch.compile: the same work as one opaque custom op (linear_op.py), no graph break
        return linear_op.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts, kernels)
    v = linear_weight.shape[0]
    n = input.shape[0]
    index = None if opts.soft else target
    probs = target if opts.soft else None
    out_dtype = output_dtype(input, target, opts)
    out_shape = (n,) + tuple(linear_weight.shape[1:-1])
    rows = opts.chunk_size or chunk_rows(
        n, input.shape[-1], v, input.dtype, opts, soft=opts.soft, class_weight=weight is not None,
        kernels=kernels,
    )
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, linear_weight, linear_bias)
    )
    if needs_grad:
        want = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
        return _LinearCrossEntropyFn.apply(
            input, linear_weight, index, probs, linear_bias, weight, opts, rows, out_shape, out_dtype,
            want, kernels, [],
        )
    # Evaluation: losses only, one product per chunk.
    problem = _Problem(input, linear_weight, index, probs, linear_bias)
    losses = problem.run(weight, opts, rows, kernels, scale=1.0, grads=(None, None, None))
    den = problem.denominator(weight, opts, compute_dtype(input.dtype))
    return reduce(losses, den, opts, out_shape, out_dtype)
