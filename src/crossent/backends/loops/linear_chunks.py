"""The token-chunk loop of the fused linear cross-entropy: the loss of ``F.linear`` + cross-entropy
without the N x V logits (linear.py has the contract, the cost and the autograd glue).

Per chunk of n tokens (shapes in brackets)::

    Z = x_c @ W.T (+ b)              [n, V]  one mm into a buffer reused by every chunk
    G = d(sum_i s_i l_i)/dZ          [n, V]  the backend's ce_chunk, in place over Z (loss and lse
                                             per row too)
    grad_x[c]  = G @ W               [n, D]  mm straight into the rows of the returned gradient
    grad_W    += G.T @ x_c           [V, D]  addmm into the returned gradient
    grad_b    += G.sum(0)            [V]

where s_i is the per-token gradient scale. Layout: with ``kernels.row_major_logits`` off (the
CPU), Z lives transposed in memory, a (V, n) buffer read through its (n, V) view (class indices;
probability targets keep it row-major, like themselves): MKL then packs the big operand W in panels
once per product and streams the small x_c, and the chunked products run at the speed of the
full-size ones (x_c @ W.T into a row-major (n, V) buffer ran ~15-20% slower at n = 400-1024,
D=512, V=128256). ce_chunk's row reductions then run over a strided class dimension, which costs
them ~10% more than on contiguous rows; the elementwise softmax is ~7% of the total. Buffers are
fresh per call and advised to use huge pages (backends/_memory.py); grad_W is written by the first
chunk's product, not zero-filled. 16-bit: the products run in the input dtype (as F.linear); the
weight and bias gradients accumulate in float32 across chunks, each chunk's G.T @ x_c rounded into
a reused (slice, D) buffer of the input dtype before it is added (no mixed-dtype addmm on every
device).
"""

from __future__ import annotations

import math

import torch

from .. import _memory, rows
from ..common import compute_dtype, mean_denominator
from .kernels import RowKernels

# Chunks of a multiple of 8 rows: the transposed product W @ x_c.T ran at full-size speed for
# r = 384, 408, ..., 512 and ~40% slower for r = 410 or 500 (MKL, AVX2).
ROW_MULTIPLE = 8


def balanced_rows(n: int, rows_max: int) -> int:
    """At most rows_max rows per chunk (a multiple of ROW_MULTIPLE where that many fit), balanced
    so that the last chunk is not a sliver."""
    rows_max = max(1, rows_max)
    if rows_max >= n:
        return max(n, 1)
    if rows_max >= ROW_MULTIPLE:
        rows_max -= rows_max % ROW_MULTIPLE
    chunks = math.ceil(n / rows_max)
    balanced = math.ceil(n / chunks)
    return min(rows_max, -(-balanced // ROW_MULTIPLE) * ROW_MULTIPLE)


class _Chunk:
    """The reused buffers of one pass: the logits (or their gradient) of a chunk, in its layout,
    and whatever the backend's ce_chunk needs beside them."""

    def __init__(self, rows_max, v, d, x, opts, kernels: RowKernels, row_major, want_w):
        self.v, self.row_major = v, row_major
        size = rows_max * v
        self.z = _memory.empty(size, x.dtype, x.device)  # logits, then the gradient in x's dtype
        self.buffers = kernels.chunk_buffers(size, x.dtype, opts, x.device)
        self.slice_rows = min(v, kernels.weight_grad_slice) if kernels.weight_grad_slice else v
        sixteen_bit = x.dtype != compute_dtype(x.dtype)
        self.w_part = _memory.empty((self.slice_rows, d), x.dtype, x.device) if want_w and sixteen_bit else None

    def logits(self, xc, weight, bias):
        """Z = xc @ weight.T (+ bias) (r, V), into the buffer, in its layout."""
        r, v = xc.shape[0], self.v
        if self.row_major:
            z = self.z[: r * v].view(r, v)
            return torch.mm(xc, weight.t(), out=z) if bias is None else torch.addmm(bias, xc, weight.t(), out=z)
        zt = self.z[: r * v].view(v, r)  # Z.T = W @ x_c.T, seen as (r, V)
        if bias is None:
            torch.mm(weight, xc.t(), out=zt)
        else:
            torch.addmm(bias.unsqueeze(1), weight, xc.t(), out=zt)
        return zt.t()


def _accumulate_weight_grad(gw, g, xc, chunk, first):
    """grad_W (+)= G.T @ x_c, in float32 for 16-bit inputs (through the rounded slice buffer)."""
    if chunk.w_part is None:
        if first:
            torch.mm(g.t(), xc, out=gw)
        else:
            gw.addmm_(g.t(), xc)
        return
    v, step = gw.shape[0], chunk.slice_rows
    for v0 in range(0, v, step):
        v1 = min(v0 + step, v)
        part = chunk.w_part[: v1 - v0]
        torch.mm(g[:, v0:v1].t(), xc, out=part)
        if first:
            gw[v0:v1].copy_(part)
        else:
            gw[v0:v1].add_(part)


def chunk_loop(x, weight, bias, tg: rows.Targets, opts, chunk_rows_, kernels: RowKernels, *,
               scale, grads, add_x=False):
    """One pass over the token chunks of one head; returns per-token losses (N,), compute dtype.

    x (N, D), weight (V, D) (any strides), bias (V,) or None; tg the head's targets (N,) / (N, V).
    scale: a number or a 0-d tensor, or per-token (N,): the factor of each token's gradient.
    grads: (grad_x (N, D) input dtype, grad_W (V, D) compute dtype, grad_b (V,) compute dtype),
           each None when not wanted, uninitialised: the loop writes grad_x rows (adds to them with
           ``add_x``), and the first chunk writes grad_W and grad_b (no zero-fill pass), later
           chunks add to them.
    """
    n, d = x.shape
    v = weight.shape[0]
    gx, gw, gb = grads
    losses = torch.empty(n, dtype=compute_dtype(x.dtype), device=x.device)
    if n == 0:
        for t in (gw, gb):
            if t is not None:
                t.zero_()
        return losses
    want_grad = any(t is not None for t in grads)
    row_major = tg.probs is not None or kernels.row_major_logits
    chunk = _Chunk(min(chunk_rows_, n), v, d, x, opts, kernels, row_major, gw is not None)
    per_token = isinstance(scale, torch.Tensor) and scale.dim() > 0
    for i in range(0, n, chunk_rows_):
        j = min(i + chunk_rows_, n)
        xc = x[i:j]  # (r, D)
        z = chunk.logits(xc, weight, bias)
        losses[i:j], _ = kernels.ce_chunk(
            z, tg.rows(slice(i, j)), opts, grad=z if want_grad else None,
            scale=scale[i:j] if per_token else scale, buffers=chunk.buffers, x_is_scratch=True,
        )
        first = i == 0
        if gb is not None:
            if first:
                torch.sum(z, 0, dtype=gb.dtype, out=gb)
            else:
                gb.add_(z.sum(0, dtype=gb.dtype))
        if gx is not None:
            if add_x:
                gx[i:j].addmm_(z, weight)
            else:
                torch.mm(z, weight, out=gx[i:j])
        if gw is not None:
            _accumulate_weight_grad(gw, z, xc, chunk, first)
    return losses


class Problem:
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

    def denominator(self, class_weight, opts, acc):
        """'mean''s denominator over every (token, head), as cross_entropy's; None otherwise."""
        if opts.reduction != "mean":
            return None
        samples = self.x.shape[0] * self.heads
        return mean_denominator(self.index, class_weight, opts, samples, acc, self.x.device)

    def run(self, class_weight, opts, rows_, kernels, *, scale, grads):
        """All heads; per-(token, head) losses (N, P). scale: a number, a 0-d tensor or (N, P)."""
        gx, gw, gb = grads
        gw3 = gw.view(self.w.shape) if gw is not None else None
        gb2 = gb.view(self.b.shape) if gb is not None else None
        per_token = isinstance(scale, torch.Tensor) and scale.dim() > 0
        acc = compute_dtype(self.x.dtype)
        v = self.w.shape[0]
        out = []
        for j in range(self.heads):
            index = self.index[:, j] if self.index is not None else None
            probs = self.probs[:, :, j] if self.probs is not None else None
            tg = rows.targets(index, probs, class_weight, opts, acc, num_classes=v)
            out.append(chunk_loop(
                self.x, self.w[:, j], self.b[:, j] if self.b is not None else None, tg, opts, rows_,
                kernels, scale=scale[:, j] if per_token else scale,
                grads=(gx, gw3[:, j] if gw3 is not None else None, gb2[:, j] if gb2 is not None else None),
                add_x=j > 0,
            ))
        return torch.stack(out, 1) if self.heads > 1 else out[0].unsqueeze(1)
