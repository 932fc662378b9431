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
    log_probs  its kernels of per-token log-probabilities and entropy (`LogProbKernels`)

    Distillation (backends/loops/distill.py; None where a backend has none):
    distill_chunk(zs, zt, target, counted, opts, *, grad, scale, buffers) -> per-row losses
        one chunk of the student's (n, V) and the teacher's logits; the gradient over zs
    topk_chunk(zs, ids, log_q, opts, *, grad, scale, buffers) -> per-row losses
        one chunk of the student's logits against the teacher's top-k (ids, log-probs) (n, k)
    distill_buffers(numel, dtype, teacher_dtype, opts, device) -> what those need beside the
        chunk's logits (allocated once per call)
    distill_rows(n, d, d_teacher, v, dtype, teacher_dtype, opts) -> tokens per chunk
    distill_alphas(opts) -> (student, teacher): factors the loop multiplies into each model's
        chunk logits inside their product (1 / T where the kernel takes them tempered); None:
        (1, 1), the kernels take raw logits
    scale_grad(g, factor) -> g  backward's g *= factor (one element, on g's device) in place, for a
        gradient forward finished: the backend's kernel, which reads the factor on the device and
        does nothing when it is 1 (no host sync); None: torch's multiply, skipped only for a factor
        on the CPU that is 1 (reading it there costs no sync)
    """

    ce_forward: Callable
    ce_chunk: Callable
    chunk_buffers: Callable
    bce_forward: Callable
    chunk_rows: Callable
    row_major_logits: bool
    weight_grad_slice: int
    name: str
    log_probs: LogProbKernels | None = None
    distill_chunk: Callable | None = None
    topk_chunk: Callable | None = None
    distill_buffers: Callable | None = None
    distill_rows: Callable | None = None
    scale_grad: Callable | None = None
    distill_alphas: Callable | None = None


@dataclass(frozen=True)
class LogProbKernels:
    """One fused backend's kernels of log-probabilities and entropy (the math:
    backends/rows_log_probs.py), for loops/log_probs.py and loops/linear_log_probs.py.

    forward(x (n, V), tg, opts, *, entropy, buffers, x_is_scratch=False)
        -> (log_probs, entropy or None, m, log_s), each (n,) in the compute dtype: the outputs
        and the row statistics backward needs (the row max and the log of the sum of exps)
    backward(x (n, V), tg, opts, m, log_s, entropy, g, h, *, grad, buffers)
        writes d(sum_i g_i log_probs_i + h_i entropy_i)/dx into ``grad`` (like x; may be x
        itself); g, h (n,) with 0 on ignored rows, either None when not differentiated
    buffers(numel, dtype, opts, entropy, device, *, scratch) -> what both need beside a chunk
        of that many logits (allocated once per call, reused by every chunk); ``scratch``: the
        chunks are the caller's scratch (the linear loop's logits), written over by both
    linear_rows(n, d, v, dtype, opts, entropy) -> tokens per chunk of linear_log_probs
    logits_rows(n, c, device) -> rows per chunk of log_probs on existing logits
    """

    forward: Callable
    backward: Callable
    buffers: Callable
    linear_rows: Callable
    logits_rows: Callable
