"""The torch-op row kernel of cross-entropy: loss and gradient of one chunk of logits, the steps of
`backends/rows.py` (which has the math) in place.

How: each chunk (~1M elements, it stays in the L3 cache) goes through the softcap (into a reused
buffer), amax, exp (written straight into the gradient tensor the call must return anyway, or into
a reused float32 buffer for 16-bit inputs), sum, one multiply by a / sum and one scatter of -b.
So forward+backward reads the logits once and writes the gradient once. `ce_chunk` is used by the
cross-entropy loop below and by the linear loss (`backends/loops/linear.py`), which feeds it one
chunk of logits at a time.

Determinism: every per-row reduction runs over one row in a fixed order (`rows.row_sum`), and
totals go through ``common.deterministic_sum``. Results are bitwise identical run to run and for
any thread count.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..._options import LossOptions
from .. import rows
from ..common import compute_dtype
from . import workers

# ~1M elements (4 MB of float32) per chunk. Each chunk costs ~15 Python-level torch ops (~5 us each
# here), so small chunks drown in dispatch; measured at 4096 x 32000 (2 threads), forward+backward
# / forward-only in ms: 256K 221/146, 512K 191/122, 1M 174/113, 2M 166/116.
CHUNK_ELEMENTS = 1 << 20
# On an accelerator (no Triton there: backends/triton is preferred) the ~15 ops per chunk are kernel
# launches of a few us each, and a chunk of 64M elements (256 MB of float32 work buffer) keeps an
# 8192 x 128256 loss at ~16 chunks (~250 launches) instead of ~1000 (~15,000). Not measured: no GPU.
DEVICE_CHUNK_ELEMENTS = 1 << 26


def chunk_elements(device) -> int:
    """Elements per chunk on ``device``."""
    return CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def _chunks(x: torch.Tensor):
    """Yield (chunk index into x, its rows, its positions of D or None) covering x (N, C, D) or
    (N, C) in chunks of ~chunk_elements."""
    n, c = x.shape[0], x.shape[1]
    size = chunk_elements(x.device)
    if x.dim() == 2 or c * x.shape[2] <= size:
        step = max(1, size // max(c * (x.shape[2] if x.dim() == 3 else 1), 1))
        for i in range(0, n, step):
            yield (slice(i, i + step),), slice(i, i + step), None
        return
    cols = max(1, size // max(c, 1))
    for i in range(n):
        for j in range(0, x.shape[2], cols):
            r, d = slice(i, i + 1), slice(j, j + cols)
            yield (r, slice(None), d), r, d


def target_logits(x: torch.Tensor, tg: rows.Targets, opts: LossOptions, acc) -> rows.Targets:
    """tg with the targets' (capped) logits of all of x at once: one gather over N, not one per
    chunk. The softcap runs the ops of `rows.capped` on them, so the value is bitwise the same."""
    z_t = x.gather(1, tg.local).squeeze(1).to(acc)
    if opts.softcap is not None:
        z_t = torch.div(z_t, opts.softcap).tanh_() * opts.softcap
    return replace(tg, z_t=z_t)


def ce_chunk(x: torch.Tensor, tg: rows.Targets, opts: LossOptions, *, grad=None, scale=1.0,
             work=None, tanh_work=None, x_is_scratch=False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (and optionally its gradient) of one chunk of logits.

    x       (n, C[, D]) logits, any float dtype; read only unless it is also ``grad``
    tg      the chunk's targets (`rows.Targets`)
    grad    None for loss only, or a tensor shaped like x that receives d(sum_i scale_i l_i)/dx
            (may be x itself: the in-place gradient)
    scale   per-row factor (n[, D]) or a number, applied to the gradient only
    work / tanh_work  reusable compute-dtype buffers at least the chunk's size
    x_is_scratch  the caller needs x no more: a loss-only pass computes in it (no buffer)
    Returns (l, lse): per-row losses (0 for ignored rows) and logsumexp, in the compute dtype.
    """
    acc = compute_dtype(x.dtype)
    # The buffer that receives exp(z - max): the gradient itself when its dtype allows.
    if grad is not None and grad.dtype == acc:
        e = grad
    elif grad is None and x_is_scratch and x.dtype == acc:
        e = x
    else:
        e = _take(work, x.shape, acc, x.device)
    th_buf = _take(tanh_work, x.shape, acc, x.device) if opts.softcap is not None else None
    z, th = rows.capped(x, opts, acc, out=e, tanh_out=th_buf)
    m = class_max(z)
    r = rows.relative_(z, m, e)  # z - m, in the buffer that then holds exp(z - m)
    sums = rows.class_sums(r, m, tg, opts)
    s = rows.row_sum(r.exp_())
    loss, a, lse = rows.row_loss(m.squeeze(1), s.log(), sums, tg, opts)
    if grad is None:
        return loss, lse
    rows.gradient_(e, a * scale / s, scale, tg, opts, th)
    if e is not grad:
        grad.copy_(e)
    return loss, lse


# K-dim chunks (n, C, D) whose positions D are at most this many: torch's amax over C runs there
# far below its sum's speed (2 x 32000 x D float32, 2 threads, the Intel VM: amax 0.29 / 0.58 /
# 1.16 ms at D = 4 / 8 / 16 against sum's 0.06 at 16), and a tree of elementwise maxima runs at
# 0.16 / 0.18 / 0.26 ms; from D = 32 amax is the faster (0.14 ms against 0.45).
TREE_MAX_POSITIONS = 16
# The tree stops at this many classes and amax finishes (a small tensor: one call instead of the
# last six levels' ~10 us each).
TREE_LEAVES = 64


def class_max(z: torch.Tensor) -> torch.Tensor:
    """max over the classes (dim 1), keepdim: amax, or for K-dim chunks of at most
    TREE_MAX_POSITIONS positions a pairwise tree of `torch.maximum` over halves of the classes
    (the first level into a new buffer, then in place) down to TREE_LEAVES, then amax. The maximum is exact and propagates nan as
    amax does, so the result is bitwise amax's."""
    if z.dim() != 3 or z.shape[2] > TREE_MAX_POSITIONS or z.shape[1] < 2:
        return z.amax(1, keepdim=True)
    c = z.shape[1]
    half = c // 2
    m = torch.maximum(z[:, :half], z[:, half:2 * half])
    if c % 2:
        m[:, :1] = torch.maximum(m[:, :1], z[:, 2 * half:])
    while m.shape[1] > TREE_LEAVES:
        c = m.shape[1]
        half = c // 2
        if c % 2:
            m[:, :1] = torch.maximum(m[:, :1], m[:, 2 * half:])
        torch.maximum(m[:, :half], m[:, half:2 * half], out=m[:, :half])
        m = m[:, :half]
    return m.amax(1, keepdim=True)


def _take(buf: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype, device) -> torch.Tensor:
    """A view of a reusable flat buffer with the given shape (allocated if missing or too small)."""
    if buf is not None and buf.shape == shape and buf.dtype == dtype:
        return buf  # a ready view (e.g. transposed like the chunk it works on)
    n = 1
    for s in shape:
        n *= s
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        return torch.empty(shape, dtype=dtype, device=device)
    return buf[:n].view(shape)


def ce_forward(x: torch.Tensor, tg: rows.Targets, opts: LossOptions, *, grad, scale) -> torch.Tensor:
    """Run ce_chunk over all chunks of x (N, C) or (N, C, D), spread over single-threaded workers
    (`workers.map_chunks`); return per-row losses (N[, D])."""
    acc = compute_dtype(x.dtype)
    per_sample = x.shape[:1] + x.shape[2:]
    losses = torch.empty(per_sample, dtype=acc, device=x.device)
    need_work = x.dtype != acc or grad is None or grad.dtype != acc
    size = min(chunk_elements(x.device), x.numel()) + x.shape[1]
    per_row_scale = isinstance(scale, torch.Tensor) and scale.dim() > 0
    # (N, C): the targets' logits in one gather over N, not one per chunk. (N, C, D): per chunk
    # (`rows.class_sums`), from the chunk while it is in cache: a gather along the strided class dim
    # of all of x reads one cache line per sample (12 ms single-threaded at (16, 21, 16384), where
    # the chunks' own gathers add ~nothing).
    if tg.index is not None and tg.z_t is None and x.numel() and x.dim() == 2:
        tg = target_logits(x, tg, opts, acc)

    def one_chunk(chunk, scratch):
        idx, r, d = chunk
        if not scratch:  # this worker's reused buffers
            scratch["work"] = torch.empty(size, dtype=acc, device=x.device) if need_work else None
            scratch["tanh"] = torch.empty(size, dtype=acc, device=x.device) if opts.softcap is not None else None
        sample = (r,) if d is None else (r, d)
        losses[sample], _ = ce_chunk(
            x[idx], tg.rows(r, d), opts, grad=grad[idx] if grad is not None else None,
            scale=scale[sample] if per_row_scale else scale, work=scratch["work"], tanh_work=scratch["tanh"],
        )

    workers.map_chunks(one_chunk, list(_chunks(x)), x.device, min_items=workers.MIN_CHUNKS)
    return losses
