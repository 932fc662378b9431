"""What a fused backend hands the shared algorithms of this package: its row kernels, and the
policies that depend on them (how many rows a chunk of the linear loss holds, which buffers its
kernel needs, how the chunk's logits are laid out). The algorithms (cross_entropy.py, binary.py,
linear*.py) call these and never ask which backend they run on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RowKernels:
    """One fused backend's kernels (backends/chunked: torch ops; backends/triton: Triton).

    ce_forward(x (N, C[, D]), tg, opts, *, grad, scale) -> per-row losses (N[, D])
        the loss of every row, and d(sum_i scale_i l_i)/dx written into ``grad`` (None: loss only)
    ce_chunk(x (n, V), tg, opts, *, grad, scale, buffers, x_is_scratch=False) -> (losses, lse)
        one chunk of the linear loss's logits; ``grad`` may be x itself (written in x's dtype);
        ``x_is_scratch``: the caller needs x no more (a loss-only pass may compute in it)
    chunk_buffers(numel, dtype, opts, device) -> what ce_chunk needs beside a chunk of that many
        logits (allocated once per call, reused by every chunk)
    bce_forward(x, y, w, pw, logits, opts, grad) -> per-element losses ('none') or their total
    chunk_rows(n, d, v, dtype, opts, *, soft, class_weight) -> tokens per chunk of the linear loss
    row_major_logits  the chunk's logits (n, V) are stored row-major (else as a (V, n) buffer read
        transposed: what the CPU's BLAS streams fastest, see linear_chunks.py)
    weight_grad_slice  vocabulary rows per slice of a 16-bit weight-gradient product (its rounded
        copy is the one (slice, D) buffer beside the float32 accumulator); 0: all V rows at once
    name  the backend's name (its custom op is crossent::linear_cross_entropy_<name>)
    """

    ce_forward: Callable
    ce_chunk: Callable
    chunk_buffers: Callable
    bce_forward: Callable
    chunk_rows: Callable
    row_major_logits: bool
    weight_grad_slice: int
    name: str
