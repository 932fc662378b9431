"""Launchers of the Triton kernels (kernels.py), as the fused algorithms' `RowKernels` (the
signatures of backends/loops/kernels.py), so that the algorithms (autograd glue, the linear loss's
chunk loop) run unchanged on top of them.

Everything stays on the device: the 'mean' scale is a device tensor read by the kernel, the class
weights' sum too; no ``.item()``, no host sync, so the losses can be captured in a CUDA graph.

Triton is imported at the first launch, not with crossent: ``TRITON_INTERPRET=1`` (CPU tensors
through Triton's interpreter, the CI's way to test the kernels) is read by Triton when a kernel is
defined, so it may be set any time before the first call.
"""

from __future__ import annotations

import functools
import os

import torch

from ..._options import LossOptions
from ..common import compute_dtype, deterministic_sum

# A row of at most this many classes is one block, held in registers between the loss and the
# gradient (read once, written once): 16 values per thread over 16 warps. Compiled for sm_90
# (tests/backends/triton/aot_compile.py, ptxas of Triton 3.9): at 16384 the block spilled (64 bytes
# with every option, 436 with probability targets, 2188 in float64); at 8192 it does not.
SINGLE_BLOCK_MAX = 8192
# Block of the two-pass loop over longer rows (8 values per thread over 8 warps).
LOOP_BLOCK = 2048
# Elements per program of the binary losses.
BINARY_BLOCK = 1024
# Vocabulary rows per slice of the linear loss's 16-bit weight-gradient product: 8192 x D 16-bit
# values (64 MiB at D=4096) instead of V x D beside the float32 accumulator; each slice is still a
# large product.
WEIGHT_GRAD_SLICE = 8192


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def importable() -> bool:
    """Whether Triton imports (asked once; a plain global, not functools.cache: torch.compile
    traces the dispatch that asks)."""
    global _IMPORTABLE
    if _IMPORTABLE is None:
        try:
            import triton  # noqa: F401

            _IMPORTABLE = True
        except ImportError:
            _IMPORTABLE = False
    return _IMPORTABLE


_IMPORTABLE = None


@functools.cache
def _kernels():
    from . import kernels

    return kernels


def _warps(block: int) -> int:
    """Warps per program: 8 (a block of 2048) to 16 (8192) values per thread for the long rows,
    fewer for short rows (a 64-class row is one warp)."""
    return max(1, min(16, block // 256))


def _scale_arg(scale, acc, device):
    """The per-row gradient scale as (tensor, stride): a number or 0-d tensor (stride 0), or one
    value per row (stride 1)."""
    if isinstance(scale, torch.Tensor):
        s = scale.to(device=device, dtype=acc)
        if s.dim() == 0:
            return s.reshape(1), 0
        return s.reshape(-1).contiguous(), 1
    return torch.full((1,), float(scale), dtype=acc, device=device), 0


def _launch_ce(x, index, probs, weight, weight_sum, opts: LossOptions, grad, scale):
    """x (N, C) or (N, C, D), any strides; index (N[, D]) int64 or probs like x; weight (C,) and
    weight_sum (1,) in the compute dtype or None; grad like x (may be x) or None.
    Returns (losses, lse), each (N * D,) in the compute dtype."""
    acc = compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    d = x.shape[2] if x.dim() == 3 else 1
    rows = n * d
    dev = x.device
    loss = torch.empty(rows, dtype=acc, device=dev)
    lse = torch.empty(rows, dtype=acc, device=dev)
    if rows == 0:
        return loss, lse
    strides = lambda t: (t.stride(0), t.stride(1), t.stride(2) if t.dim() == 3 else 0)
    g = grad if grad is not None else x
    p = probs if probs is not None else x
    tgt = index.reshape(-1).contiguous() if index is not None else loss
    s, s_stride = _scale_arg(scale, acc, dev)
    block, single = block_for(c, probs is not None, acc == torch.float64)
    _kernels().ce_kernel[(rows,)](
        x, g, tgt, p, weight if weight is not None else loss,
        weight_sum if weight_sum is not None else loss, s, loss, lse,
        c, d, *strides(x), *strides(g), *strides(p), s_stride,
        opts.ignore_index, _params(opts, acc, dev),
        BLOCK=block, SINGLE=single, SOFT=probs is not None, HAS_WEIGHT=weight is not None,
        SMOOTH=opts.label_smoothing > 0.0, HAS_ZL=bool(opts.z_loss), HAS_CAP=opts.softcap is not None,
        WRITE_GRAD=grad is not None, ACC_F64=acc == torch.float64, num_warps=_warps(block),
    )
    return loss, lse


def block_for(num_classes: int, soft: bool, f64: bool) -> tuple[int, bool]:
    """(BLOCK, SINGLE) of the CE kernel for a row of ``num_classes``. Probability targets and
    float64 keep more per class in registers: their one-block rows are half as long (each halving
    measured as needed by aot_compile.py: at 8192, soft bfloat16 spilled 20 bytes, soft float64
    276)."""
    single_max = SINGLE_BLOCK_MAX >> int(soft) >> int(f64)
    if num_classes <= single_max:
        return triton_next_pow2(num_classes), True
    return LOOP_BLOCK, False


def _params(opts: LossOptions, acc, device):
    """(eps, zl, cap) as a device tensor in the compute dtype, by fills (torch.tensor of a list
    would copy from the host: a sync on a GPU, and a failure under CUDA-graph capture)."""
    p = torch.full((3,), float(opts.label_smoothing), dtype=acc, device=device)
    if opts.z_loss:
        p[1].fill_(float(opts.z_loss))
    else:
        p[1].zero_()
    p[2].fill_(float(opts.softcap) if opts.softcap is not None else 1.0)
    return p


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _class_weights(tg, acc):
    """(the block's class weights, contiguous, and their total W as a (1,) device tensor) or Nones."""
    if tg.weight is None:
        return None, None
    return tg.weight.to(acc).contiguous(), tg.W.to(acc).reshape(1)


def ce_forward(x, tg, opts: LossOptions, *, grad, scale):
    """`RowKernels.ce_forward` on the GPU: per-row losses (N[, D]) of x (N, C[, D]); the
    gradient d(sum_i scale_i l_i)/dx written into ``grad`` (None: loss only)."""
    acc = compute_dtype(x.dtype)
    w, w_sum = _class_weights(tg, acc)
    loss, _ = _launch_ce(x, tg.index, tg.probs, w, w_sum, opts, grad, scale)
    return loss.view(x.shape[:1] + x.shape[2:])


def ce_chunk(x, tg, opts: LossOptions, *, grad=None, scale=1.0, buffers=None, x_is_scratch=False):
    """`RowKernels.ce_chunk` on the GPU: (losses, lse) of one chunk x (n, C). No buffers are
    needed (the kernel keeps its temporaries in registers; a 16-bit gradient is written in its own
    dtype), and a loss-only pass writes nothing."""
    acc = compute_dtype(x.dtype)
    w, w_sum = _class_weights(tg, acc)
    loss, lse = _launch_ce(x, tg.index, tg.probs, w, w_sum, opts, grad, scale)
    per_sample = x.shape[:1] + x.shape[2:]
    return loss.view(per_sample), lse.view(per_sample)


def chunk_buffers(numel, dtype, opts, device):
    return None


def _trailing_broadcast(t, shape):
    """(flat contiguous tensor, modulus) such that t expanded to ``shape`` at flat index i is
    flat[i % modulus]: free when t spans trailing dims only (pos_weight (C,) on (N, C)), else the
    expanded tensor is materialised (modulus = its numel)."""
    t_shape = list(t.shape)
    while t_shape and t_shape[0] == 1:
        t_shape.pop(0)
    k = len(t_shape)
    if k == 0 or tuple(shape[len(shape) - k:]) == tuple(t_shape):
        flat = t.reshape(-1).contiguous()
    else:
        flat = t.expand(shape).reshape(-1).contiguous()
    return flat, max(flat.numel(), 1)


def bce_forward(x, y, w, pw, logits: bool, opts: LossOptions, grad):
    """`RowKernels.bce_forward` on the GPU: the per-element losses (compute dtype, x's shape)
    for 'none', else their deterministic total (0-d); the gradient into ``grad`` (contiguous, as
    binary.py allocates it; None: none)."""
    acc = compute_dtype(x.dtype)
    dev = x.device
    shape = tuple(x.shape)
    xf = x.reshape(-1).contiguous()
    yf = y.reshape(-1).contiguous()
    numel = xf.numel()
    per_element = opts.reduction == "none"
    programs = max(1, -(-numel // BINARY_BLOCK))
    loss = torch.empty(numel if per_element else 1, dtype=acc, device=dev)
    partial = torch.empty(programs if not per_element else 1, dtype=acc, device=dev)
    gflat = grad.view(-1) if grad is not None else None  # (binary.py allocates it contiguous)
    wf, w_mod = _trailing_broadcast(w, shape) if w is not None else (loss, 1)
    pwf, pw_mod = _trailing_broadcast(pw, shape) if pw is not None else (loss, 1)
    if numel:
        _kernels().bce_kernel[(programs,)](
            xf, yf, wf, pwf, loss, partial, gflat if gflat is not None else loss, numel, w_mod, pw_mod,
            BLOCK=BINARY_BLOCK, LOGITS=logits, HAS_W=w is not None, HAS_PW=pw is not None,
            PER_ELEMENT=per_element, WRITE_GRAD=grad is not None, ACC_F64=acc == torch.float64,
            num_warps=4,
        )
    if per_element:
        return loss.view(shape)
    if not numel:
        return torch.zeros((), dtype=acc, device=dev)
    return deterministic_sum(partial)


def row_kernels(chunk_rows):
    """The Triton kernels as the fused algorithms' RowKernels (one value per process)."""
    global _ROW_KERNELS
    if _ROW_KERNELS is None:
        from ..loops import RowKernels

        _ROW_KERNELS = RowKernels(
            ce_forward=ce_forward, ce_chunk=ce_chunk, chunk_buffers=chunk_buffers,
            bce_forward=bce_forward, chunk_rows=chunk_rows, row_major_logits=True,
            weight_grad_slice=WEIGHT_GRAD_SLICE, name="triton",
        )
    return _ROW_KERNELS


_ROW_KERNELS = None
