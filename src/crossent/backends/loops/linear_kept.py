"""Reduction 'none' of the fused linear loss: the kept chunk (linear.py has the contract).

With reduction 'none' each token's gradient scale s_i is grad_output[i], known only in backward,
so backward recomputes the logits (8 N D V FLOPs against 6). But G_i = dl_i/dZ_i does not depend
on s_i, and the products are linear in it: grad_x[i] = s_i (G_i @ W), grad_W = G.T @ (s x),
grad_b = G.T @ s. So forward finishes G for its *last* chunk (in the buffer it has anyway) and
keeps that chunk for backward, which takes the kept chunk's share from it (no product of its
logits) and recomputes only the chunks before it, in the same buffer. Where N x V fits one chunk
(every N <= ~7/8 D on the CPU: `chunk_rows`) nothing is recomputed at all: 6 N D V FLOPs, as the
scalar reductions. Memory: the chunk buffer forward allocates anyway, alive until backward
instead of freed at forward's end (torch's composition keeps N x V logits and log-softmax).
Float32 and float64 only: a 16-bit G rounded before its scale is applied would round twice.
"""

from __future__ import annotations

import torch

from .. import rows
from ..common import compute_dtype
from .kernels import RowKernels
from .linear_chunks import ce_step, chunk_for, run_chunks


def keeps_last_chunk(problem, x) -> bool:
    """Whether reduction 'none' keeps its last chunk from forward to backward: one head (K-dim
    heads recompute), and products in the compute dtype."""
    return problem.heads == 1 and x.dtype == compute_dtype(x.dtype)


def chunk_loop_keeping_last(x, weight, bias, tg: rows.Targets, opts, chunk_rows_, kernels: RowKernels, *,
                            want_w):
    """Forward of reduction 'none': every chunk's losses, and the last chunk's G = dl/dZ (scale 1)
    left in its buffer. Returns (losses (N,), kept) for `backward_with_kept` (None when N = 0)."""
    n = x.shape[0]
    chunk = chunk_for(x, weight, tg, opts, chunk_rows_, kernels, want_w=want_w)
    step = ce_step(tg, opts, kernels, chunk, 1.0)
    last = _last_start(n, chunk_rows_)
    losses = run_chunks(x, weight, bias, chunk, chunk_rows_, (None, None, None), step, stop=last)
    if n == 0:
        return losses, None
    kept = _last_chunk_gradient(x, weight, bias, step, chunk, last)
    losses[last:] = kept[3]
    return losses, kept[:3]


def _last_start(n: int, chunk_rows_: int) -> int:
    """The first row of the last chunk of ``run_chunks``' pass over n rows."""
    return ((n - 1) // chunk_rows_) * chunk_rows_ if n else 0


def _last_chunk_gradient(x, weight, bias, step, chunk, start):
    """(chunk, rows, G, losses): the logits of rows ``start:`` and their unscaled gradient G (r, V)
    in ``chunk``'s buffer, by ``step`` with scale 1."""
    sl = slice(start, x.shape[0])
    z = chunk.logits(x[sl], weight, bias)
    return chunk, sl, z, step(z, sl, z)


def backward_with_kept(x, weight, bias, tg: rows.Targets, opts, chunk_rows_, kernels: RowKernels, kept, *,
                       scale, grads):
    """Backward of reduction 'none' from `chunk_loop_keeping_last`'s kept chunk: its share of the
    three gradients first (scaled by ``scale`` (N,) through the products' small operands), then
    the chunks before it recomputed in the kept chunk's buffer (which G no longer needs).
    ``kept`` None (a repeated backward: the first one released it): the last chunk's G is
    recomputed first, as forward made it, so every backward gives the same bits."""
    if kept is None:
        chunk = chunk_for(x, weight, tg, opts, chunk_rows_, kernels, want_w=grads[1] is not None)
        start = _last_start(x.shape[0], chunk_rows_)
        kept = _last_chunk_gradient(x, weight, bias, ce_step(tg, opts, kernels, chunk, 1.0), chunk, start)[:3]
    chunk, sl, g = kept
    kept_chunk_gradients(g, x[sl], weight, sl, grads, scale[sl])
    if sl.start == 0:
        return
    run_chunks(x, weight, bias, chunk, chunk_rows_, grads, ce_step(tg, opts, kernels, chunk, scale),
               stop=sl.start, written=True)


def kept_chunk_gradients(g, xc, weight, rows_, grads, s):
    """The first share of the gradients, from an unscaled G (r, V) and the rows' scales s (r,):
    grad_x[rows] = s * (G @ W), grad_W = G.T @ (s x_c), grad_b = G.T @ s (writes, not adds)."""
    gx, gw, gb = grads  # (every one in G's dtype: `keeps_last_chunk`)
    s = s.to(g.dtype)
    if gb is not None:
        torch.mv(g.t(), s, out=gb)
    if gx is not None:
        out = gx[rows_]
        torch.mm(g, weight, out=out)
        out.mul_(s.unsqueeze(1))
    if gw is not None:
        torch.mm(g.t(), xc * s.unsqueeze(1), out=gw)


def run_keeping_last(problem, class_weight, opts, rows_, kernels, *, want_w):
    """Reduction 'none''s forward for a `keeps_last_chunk` problem: losses (N, 1) and the kept chunk."""
    w = problem.w[:, 0]
    b = problem.b[:, 0] if problem.b is not None else None
    losses, kept = chunk_loop_keeping_last(problem.x, w, b, problem.targets(class_weight, opts), opts, rows_, kernels,
                                           want_w=want_w)
    return losses.unsqueeze(1), kept


def problem_backward_with_kept(problem, class_weight, opts, rows_, kernels, kept, *, scale, grads):
    """Reduction 'none''s backward for a `keeps_last_chunk` problem, from the kept chunk (None:
    recomputed); scale (N, 1); grads as `Problem.run`'s."""
    w = problem.w[:, 0]
    b = problem.b[:, 0] if problem.b is not None else None
    gx, gw, gb = grads
    grads = (gx, gw.view(problem.w.shape)[:, 0] if gw is not None else None,
             gb.view(problem.b.shape)[:, 0] if gb is not None else None)
    backward_with_kept(problem.x, w, b, problem.targets(class_weight, opts), opts, rows_, kernels, kept,
                       scale=scale[:, 0], grads=grads)
