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
device). Where torch multiplies 16-bit operands into a float32 result (``torch.addmm(...,
out_dtype=torch.float32)``, `float32_products`: CUDA, torch >= 2.9), grad_W accumulates inside
that product instead: no slice buffer, no separate add (per chunk at the Llama-3 head, V=128256,
D=4096, bfloat16: the 16-bit slices written and read back, 2 x 1.05 GB, and the float32 add,
2 x 2.1 GB, become the product's own read and write of the float32 accumulator, 2 x 2.1 GB, which
stay behind its 2 n V D FLOPs when n >= MIN_FUSED_ROWS). A 16-bit weight's float32 grad_W may be
a `weight_grad.SplitWeightGrad` (two row blocks, the first inside the 16-bit result's storage):
every product into it is cut at the blocks' boundary (`weight_grad_blocks`).
"""

from __future__ import annotations

import math

import torch

from .. import _memory, rows
from ..common import compute_dtype, mean_denominator
from .kernels import RowKernels
from .weight_grad import SplitWeightGrad

# Chunks of a multiple of 8 rows: the transposed product W @ x_c.T ran at full-size speed for
# r = 384, 408, ..., 512 and ~40% slower for r = 410 or 500 (MKL, AVX2).
ROW_MULTIPLE = 8
# Chunk rows at least, where grad_W accumulates inside the product: the product reads and writes
# the float32 accumulator (8 bytes per element of grad_W) against 2 n FLOPs per element, n/4
# FLOP/byte, which must exceed the device's FLOP/byte ridge to stay compute-bound (an H200:
# ~990 TFLOP/s bf16 / 4.8 TB/s = 206, so n >= 824; 1024 leaves a margin). Arithmetic, NOT
# measured: no GPU has been lent yet.
MIN_FUSED_ROWS = 1024

_FLOAT32_PRODUCTS: dict = {}


def float32_products(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch multiplies ``dtype`` operands on ``device`` into a float32 result in place
    (``torch.addmm(c, a, b, out_dtype=torch.float32, out=c)``): asked once per (device type,
    dtype) by a 2 x 2 product, whose failure is raised when it is dispatched (no sync)."""
    key = (device.type, dtype)
    if key not in _FLOAT32_PRODUCTS:
        ok = device.type != "cpu" and dtype in (torch.bfloat16, torch.float16)
        if ok:
            try:
                a = torch.zeros((2, 2), dtype=dtype, device=device)
                c = torch.zeros((2, 2), dtype=torch.float32, device=device)
                torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
                torch.mm(a, a, out_dtype=torch.float32, out=c)
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _FLOAT32_PRODUCTS[key] = ok
    return _FLOAT32_PRODUCTS[key]


def weight_grad_product(gw, g_t, xc, first):
    """grad_W (float32) = or += g_t @ xc (16-bit operands) inside one product."""
    if first:
        torch.mm(g_t, xc, out_dtype=torch.float32, out=gw)
    else:
        torch.addmm(gw, g_t, xc, out_dtype=torch.float32, out=gw)


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


class Chunk:
    """The reused buffers of one pass: the logits (or their gradient) of a chunk, in its layout,
    and whatever the backend's ce_chunk needs beside them."""

    def __init__(self, rows_max, v, d, x, opts, kernels: RowKernels, row_major, want_w, buffers=None):
        self.v, self.row_major = v, row_major
        size = rows_max * v
        self.z = _memory.empty(size, x.dtype, x.device)  # logits, then the gradient in x's dtype
        # (``buffers``: the row kernel's own, made by the caller for another objective's kernels)
        self.buffers = buffers(size) if buffers is not None else kernels.chunk_buffers(size, x.dtype, opts, x.device)
        self.slice_rows = min(v, kernels.weight_grad_slice) if kernels.weight_grad_slice else v
        sixteen_bit = x.dtype != compute_dtype(x.dtype)
        self.fused_w = want_w and sixteen_bit and float32_products(x.device, x.dtype)
        split = want_w and sixteen_bit and not self.fused_w
        self.w_part = _memory.empty((self.slice_rows, d), x.dtype, x.device) if split else None

    def logits(self, xc, weight, bias, alpha=1.0):
        """Z = xc @ weight.T (+ bias) (r, V), into the buffer, in its layout; times ``alpha`` inside
        the product where it is not 1 (a distillation's 1 / T: no pass of its own)."""
        r, v = xc.shape[0], self.v
        if alpha != 1.0:
            return self._scaled_logits(xc, weight, bias, alpha)
        if self.row_major:
            z = self.z[: r * v].view(r, v)
            return torch.mm(xc, weight.t(), out=z) if bias is None else torch.addmm(bias, xc, weight.t(), out=z)
        zt = self.z[: r * v].view(v, r)  # Z.T = W @ x_c.T, seen as (r, V)
        if bias is None:
            torch.mm(weight, xc.t(), out=zt)
        else:
            torch.addmm(bias.unsqueeze(1), weight, xc.t(), out=zt)
        return zt.t()


    def _scaled_logits(self, xc, weight, bias, alpha):
        """alpha (xc @ weight.T + bias) by addmm's alpha and beta (beta 0: the buffer's old values,
        read as addmm's input, are ignored, nan included)."""
        r, v = xc.shape[0], self.v
        if self.row_major:
            z = self.z[: r * v].view(r, v)
            return torch.addmm(z if bias is None else bias, xc, weight.t(), beta=0.0 if bias is None else alpha,
                               alpha=alpha, out=z)
        zt = self.z[: r * v].view(v, r)
        torch.addmm(zt if bias is None else bias.unsqueeze(1), weight, xc.t(), beta=0.0 if bias is None else alpha,
                    alpha=alpha, out=zt)
        return zt.t()


def weight_grad_blocks(gw) -> list:
    """grad_W as row blocks ``[(v0, v1, tensor)]``: a `SplitWeightGrad`'s views of one head (a
    list, as `Problem.run` passes them) or one block for a plain tensor."""
    return gw if isinstance(gw, list) else [(0, gw.shape[0], gw)]


def _accumulate_weight_grad(gw, g, xc, chunk, first):
    """grad_W (+)= G.T @ x_c, in float32 for 16-bit inputs (inside the product where torch can,
    else through the rounded slice buffer); per row block of grad_W (weight_grad.py)."""
    for b0, b1, block in weight_grad_blocks(gw):
        if b1 > b0:
            _accumulate_block(block, g[:, b0:b1], xc, chunk, first)


def _accumulate_block(gw, g, xc, chunk, first):
    if chunk.fused_w:
        weight_grad_product(gw, g.t(), xc, first)
        return
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
    chunk = chunk_for(x, weight, tg, opts, chunk_rows_, kernels, want_w=grads[1] is not None)
    return run_chunks(x, weight, bias, chunk, chunk_rows_, grads, ce_step(tg, opts, kernels, chunk, scale),
                      add_x=add_x)


def chunk_for(x, weight, tg: rows.Targets, opts, chunk_rows_, kernels: RowKernels, *, want_w) -> Chunk:
    """The reused buffers of a cross-entropy pass over x (N, D) in chunks of ``chunk_rows_`` rows:
    row-major logits for probability targets or where the backend asks for them."""
    row_major = tg.probs is not None or kernels.row_major_logits
    return Chunk(max(1, min(chunk_rows_, x.shape[0])), weight.shape[0], x.shape[1], x, opts, kernels, row_major,
                 want_w)


def ce_step(tg: rows.Targets, opts, kernels: RowKernels, chunk: Chunk, scale):
    """`run_chunks`' step for cross-entropy: the backend's ce_chunk over a chunk's logits, the
    rows' targets and gradient scale (`scale_rows`), in ``chunk``'s buffers."""

    def step(z, sl, grad):
        return kernels.ce_chunk(z, tg.rows(sl), opts, grad=grad, scale=scale_rows(scale, sl),
                                buffers=chunk.buffers, x_is_scratch=True)[0]

    return step


def scale_rows(scale, sl: slice):
    """The rows ``sl`` of a per-token scale (N,); a number or a 0-d tensor as it is."""
    return scale[sl] if isinstance(scale, torch.Tensor) and scale.dim() > 0 else scale


def run_chunks(x, weight, bias, chunk: Chunk, chunk_rows_, grads, step, *, add_x=False, alpha=1.0,
               stop=None, written=False):
    """The token-chunk loop every fused linear loss shares: per chunk of rows ``sl``, the logits
    z = x[sl] W^T (+ b) into ``chunk``'s buffer, ``step(z, sl, grad)`` -> the rows' losses, with
    grad = z itself (the step writes d(loss)/dz over it) when a gradient is wanted, else None;
    then the three products of `chunk_gradients`. grads and add_x as in `chunk_loop`; alpha: a
    factor of the logits inside their product (`Chunk.logits`); ``stop``: the rows before it only;
    ``written``: grad_W and grad_b already hold a chunk's share (`kept_chunk_gradients`), so every
    chunk adds. Returns the per-token losses (N,) in the compute dtype."""
    n = x.shape[0]
    losses = torch.empty(n, dtype=compute_dtype(x.dtype), device=x.device)
    want_grad = any(t is not None for t in grads)
    if n == 0:
        if grads[2] is not None:
            grads[2].zero_()
        for _, _, t in weight_grad_blocks(grads[1]) if grads[1] is not None else ():
            t.zero_()
        return losses
    for i in range(0, n if stop is None else stop, chunk_rows_):
        sl = slice(i, min(i + chunk_rows_, n))
        xc = x[sl]  # (r, D)
        z = chunk.logits(xc, weight, bias, alpha)
        losses[sl] = step(z, sl, z if want_grad else None)
        if want_grad:
            chunk_gradients(z, xc, weight, sl, grads, chunk, first=i == 0 and not written, add_x=add_x)
    return losses


def chunk_gradients(g, xc, weight, rows, grads, chunk, *, first, add_x=False):
    """The three gradients' share of one chunk whose logits' gradient is g (r, V): grad_b (+)=
    g.sum(0), grad_x[rows] (+)= g @ W, grad_W (+)= g.T @ x_c (the first chunk writes, later ones
    add; ``add_x``: add to grad_x's rows too)."""
    gx, gw, gb = grads
    if gb is not None:
        if first:
            torch.sum(g, 0, dtype=gb.dtype, out=gb)
        else:
            gb.add_(g.sum(0, dtype=gb.dtype))
    if gx is not None:
        if add_x:
            gx[rows].addmm_(g, weight)
        else:
            torch.mm(g, weight, out=gx[rows])
    if gw is not None:
        _accumulate_weight_grad(gw, g, xc, chunk, first)


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
        split = isinstance(gw, SplitWeightGrad)
        gw3 = gw.view(self.w.shape) if gw is not None and not split else None
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
                grads=(gx, gw.head_views(self.w.shape, j) if split else gw3[:, j] if gw3 is not None else None,
                       gb2[:, j] if gb2 is not None else None),
                add_x=j > 0,
            ))
        return torch.stack(out, 1) if self.heads > 1 else out[0].unsqueeze(1)

    def targets(self, class_weight, opts):
        """The one head's row targets (`keeps_last_chunk` problems)."""
        index = self.index[:, 0] if self.index is not None else None
        probs = self.probs[:, :, 0] if self.probs is not None else None
        return rows.targets(index, probs, class_weight, opts, compute_dtype(self.x.dtype), num_classes=self.w.shape[0])
