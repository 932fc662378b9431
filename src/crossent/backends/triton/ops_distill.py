"""Launchers of the distillation kernels (kernels_distill.py) as the fused algorithms'
`RowKernels` entries (backends/loops/kernels.py): the chunk loop of backends/loops/distill.py
runs unchanged on top of them. No host sync: the options travel as one device tensor, filled
once per call (`Buffers`); every launch is asynchronous; no atomics (deterministic)."""

from __future__ import annotations

import functools

import torch

from ..._options import DistillationOptions
from .. import divergence as dv
from ..common import compute_dtype
from . import ops

# Columns per block of the kernels' loops over a row (the rows are read two or three times:
# the chunk's rows stay in L2 between passes on a GPU -- a design expectation, NOT measured).
BLOCK = 2048


@functools.cache
def _kernels():
    from . import kernels_distill

    return kernels_distill


def _fill(values, acc, device):
    """A device tensor of the given numbers, by fills (torch.tensor of a list copies from the
    host: a sync on a GPU, a failure under CUDA-graph capture)."""
    t = torch.zeros(len(values), dtype=acc, device=device)
    for i, v in enumerate(values):
        if v:
            t[i].fill_(float(v))
    return t


class Buffers:
    """Per call: the options as a device tensor in the compute dtype (the kernels need no
    chunk-sized buffers: their temporaries live in registers)."""

    def __init__(self, numel, dtype, teacher_dtype, opts: DistillationOptions, device):
        acc = compute_dtype(dtype)
        if opts.topk:
            self.params = _fill([1.0 / opts.temperature, opts.softcap or 1.0], acc, device)
            return
        c1, c2 = dv.mixture_constants(opts.beta) if 0.0 < opts.beta < 1.0 else (0.0, 0.0)
        self.params = _fill([opts.beta, 1.0 / opts.temperature, opts.softcap or 1.0, opts.teacher_softcap or 1.0,
                             opts.hard_weight, opts.soft_weight, c1, c2], acc, device)


def _block(v: int) -> int:
    return min(ops.triton_next_pow2(v), min(BLOCK, ops.LOOP_BLOCK))


def distill_chunk(zs, zt, target, counted, opts: DistillationOptions, *, grad=None, scale=1.0, buffers):
    """`RowKernels.distill_chunk`: per-row losses (n,) of one chunk; the gradient over ``grad``."""
    acc = compute_dtype(zs.dtype)
    n, v = zs.shape
    loss = torch.empty(n, dtype=acc, device=zs.device)
    if n == 0:
        return loss
    soft, hard = opts.soft_weight != 0.0, opts.hard_weight != 0.0
    s, s_stride = ops._scale_arg(scale, acc, zs.device)
    t = zt if zt is not None else zs
    g = grad if grad is not None else zs
    block = _block(v)
    mode = 0 if opts.beta == 0.0 else 1 if opts.beta == 1.0 else 2
    _kernels().distill_kernel[(n,)](
        zs, t, g, target if target is not None else counted, counted.to(torch.int32), s, loss, buffers.params,
        v, zs.stride(0), zs.stride(1), t.stride(0), t.stride(1), g.stride(0), g.stride(1), s_stride,
        BLOCK=block, MODE=mode, SOFT=soft, HARD=hard,
        HARD_T1=opts.temperature == 1.0, HAS_CAP=opts.softcap is not None,
        HAS_TCAP=opts.teacher_softcap is not None, WRITE_GRAD=grad is not None,
        # the mixture (0 < beta < 1) holds both softmaxes and the mixture per class: twice the warps
        # (Triton 3.6, the GPU image's, spilled 12 bytes at bf16 with every option with 8; none with 16)
        ACC_F64=acc == torch.float64, num_warps=ops._warps(block * 2 if mode == 2 else block),
    )
    return loss


def topk_chunk(zs, ids, log_q, opts: DistillationOptions, *, grad=None, scale=1.0, buffers):
    """`RowKernels.topk_chunk`: per-row losses (n,); the gradient over ``grad``. With tail=True
    the chunk's logits are scratch (the support is marked in them)."""
    acc = compute_dtype(zs.dtype)
    n, v = zs.shape
    loss = torch.empty(n, dtype=acc, device=zs.device)
    if n == 0:
        return loss
    s, s_stride = ops._scale_arg(scale, acc, zs.device)
    g = grad if grad is not None else zs
    block = _block(v)
    k = ids.shape[1]
    _kernels().topk_kernel[(n,)](
        zs, g, ids, log_q, s, loss, buffers.params,
        v, k, zs.stride(0), zs.stride(1), g.stride(0), g.stride(1), ids.stride(0), ids.stride(1),
        log_q.stride(0), log_q.stride(1), s_stride, opts.ignore_index,
        BLOCK=block, KBLOCK=ops.triton_next_pow2(k), TAIL=opts.tail, HAS_CAP=opts.softcap is not None,
        WRITE_GRAD=grad is not None, ACC_F64=acc == torch.float64, num_warps=ops._warps(block),
    )
    return loss


def distill_rows(n, num_features, teacher_features, num_classes, dtype, teacher_dtype, opts, *,
                 budget_bytes=None):
    """Tokens per chunk: the chunk's logits of both models take a quarter of the student's
    16-bit weight gradient's bytes (at least MIN_BUDGET_BYTES), as the linear loss's rule."""
    from ..loops import balanced_rows
    from . import MIN_BUDGET_BYTES

    size = torch.empty((), dtype=dtype).element_size()
    per_class = size + (torch.empty((), dtype=teacher_dtype).element_size()
                        if not opts.topk and opts.soft_weight != 0.0 else 0)
    if budget_bytes is None:
        budget_bytes = max(MIN_BUDGET_BYTES, num_classes * num_features * size // 4)
    return balanced_rows(n, budget_bytes // max(1, per_class * num_classes))
