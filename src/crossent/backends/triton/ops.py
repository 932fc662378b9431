"""Launchers of the Triton kernels (kernels.py, kernels_binary.py, kernels_scale.py), as the fused
algorithms' `RowKernels` (the signatures of backends/loops/kernels.py), so that the algorithms
(autograd glue, the linear loss's chunk loop) run unchanged on top of them; and `launch_ce_grad`,
the gradient from saved row statistics, for a torch.compile custom op (not wired yet: issue 26).

Everything stays on the device: the 'mean' scale is a device tensor read by the kernel, the class
weights' sum too, grad_output in backward as well; no ``.item()``, no host sync, so the losses can
be captured in a CUDA graph.

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
from . import schedule

# A row of at most this many classes is one block, held in registers between the loss and the
# gradient (read once, written once): 16 values per thread over 16 warps. Compiled for sm_90
# (tests/backends/triton/aot_compile.py, ptxas of Triton 3.9): at 16384 the block spilled (64 bytes
# with every option, 436 with probability targets, 2188 in float64); at 8192 it does not.
SINGLE_BLOCK_MAX = 8192
# Block of the long rows' pipelined loop, for 16-bit logits (8 KiB; float32 and float64 blocks
# hold the same bytes: half and a quarter as many classes): 8 values per thread over 16 warps, one
# 16-byte load each, STAGES blocks in flight per program (32 KiB per SM: with one program per SM,
# 4.2 MB in flight over 132 SMs, what 4.3 TB/s needs at ~1 us of latency -- Little's law).
LOOP_BLOCK = 4096
STAGES = 4
# Blocks in flight for loop variants with per-class options (class weights, smoothing, softcap,
# probability targets) or float64: their extra live values leave no room for 4 stages within the
# registers (aot_compile.py, sm_90: 4 stages spilled 92 bytes with every option in bfloat16, 24
# with probability targets in float32, 16 in float64; 3 stages still 68 in bfloat16; 2: none).
HEAVY_STAGES = 2
# Elements per program of the binary losses.
BINARY_BLOCK = 1024
# Elements per block of the gradient scale kernel (8 values per thread over 16 warps).
SCALE_BLOCK = 4096
# Vocabulary rows per slice of the linear loss's 16-bit weight-gradient product where torch has
# no float32-accumulating addmm (backends/loops/linear_chunks.py): 8192 x D 16-bit values (64 MiB
# at D=4096) beside the float32 accumulator; each slice is still a large product.
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
    from . import kernels, kernels_binary, kernels_scale

    return kernels, kernels_binary, kernels_scale


def _warps(block: int) -> int:
    """Warps per program: 16 for blocks of 4096 classes and more, fewer for short rows (a
    64-class row is one warp)."""
    return max(1, min(16, block // 256))


# Registers per thread of the sm_90 register file (64K per SM) when PROGRAMS_PER_SM programs of
# ``warps`` warps share an SM, at most 255 (the ISA's cap).
REGISTER_FILE = 65536


def persistent_maxnreg(warps: int) -> int:
    """``maxnreg`` of a persistent-grid launch (schedule.long_row_programs: PROGRAMS_PER_SM
    programs per SM): the registers each thread may take with that many programs resident. ptxas,
    left to itself, sized 16-warp loop programs for two per SM (64 registers) and spilled 4 bytes
    (bf16 C=50257 with label smoothing, Triton 3.6 and 3.7, sm_90); the grid never puts two on an
    SM, and with .maxnreg 128 the same kernel took 96 registers, no spill."""
    return min(255, REGISTER_FILE // (32 * warps * schedule.PROGRAMS_PER_SM))


def single_block_max(soft: bool, f64: bool, options: bool = False, elem_size: int = 2) -> int:
    """The longest row the CE kernel holds as one block. Probability targets and float64 keep more
    per class in registers: their one-block rows are half as long (each halving measured as
    needed by aot_compile.py: at 8192, soft bfloat16 spilled 20 bytes, soft float64 276); rows of
    4- and 8-byte values with any option (class weights, smoothing, z_loss, softcap) half again
    (sm_90: float32 at 8192 with every option spilled 28 bytes on 16 warps with Triton 3.7 and on
    32 warps with 3.6; float64 at 4096 176-184 bytes with every option, 28 with
    weight+smoothing+z_loss, 4 with smoothing+z_loss+softcap, on 16 or 32 warps)."""
    return SINGLE_BLOCK_MAX >> int(soft) >> int(f64) >> int(options and elem_size >= 4)


def single_warps(block: int, soft: bool) -> int:
    """Warps of a one-block row: as `_warps`, twice as many with probability targets (x and p per
    class: Triton 3.6 spilled 4 bytes at C=1000 soft bf16/f16 with 4 warps; none with 8)."""
    return _warps(block * 2 if soft else block)


def block_for(num_classes: int, soft: bool, f64: bool, elem_size: int = 2, options: bool = False) -> tuple[int, bool]:
    """(BLOCK, SINGLE) of the CE kernel for a row of ``num_classes`` logits of ``elem_size``
    bytes: one block up to `single_block_max`; the loop's block holds LOOP_BLOCK 16-bit values'
    bytes. ``options``: class weights, smoothing, z_loss or a softcap."""
    if num_classes <= single_block_max(soft, f64, options, elem_size):
        return triton_next_pow2(num_classes), True
    return max(1, LOOP_BLOCK * 2 // max(2, elem_size)), False


def loop_stages(single: bool, soft: bool, weight: bool, smooth: bool, cap: bool, f64: bool) -> int:
    """STAGES of a CE launch: 1 for a one-block row (nothing to pipeline), HEAVY_STAGES for the
    loop with per-class options or float64, else STAGES."""
    if single:
        return 1
    return HEAVY_STAGES if (soft or weight or smooth or cap or f64) else STAGES


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _scale_arg(scale, acc, device):
    """The per-row gradient scale as (tensor, stride): a number or 0-d tensor (stride 0), or one
    value per row (stride 1)."""
    if isinstance(scale, torch.Tensor):
        s = scale.to(device=device, dtype=acc)
        if s.dim() == 0:
            return s.reshape(1), 0
        return s.reshape(-1).contiguous(), 1
    return torch.full((1,), float(scale), dtype=acc, device=device), 0


def _any_option(tg, opts: LossOptions) -> bool:
    return (tg.weight is not None or opts.label_smoothing > 0.0 or bool(opts.z_loss)
            or opts.softcap is not None)


def _stages(single, tg, opts: LossOptions, acc) -> int:
    return loop_stages(single, tg.probs is not None, tg.weight is not None, opts.label_smoothing > 0.0,
                       opts.softcap is not None, acc == torch.float64)


def _params(opts: LossOptions, acc, device):
    """(eps, zl, cap) as a device tensor in the compute dtype, by fills (torch.tensor of a list
    would copy from the host: a sync on a GPU, and a failure under CUDA-graph capture)."""
    p = torch.full((3,), float(opts.label_smoothing), dtype=acc, device=device)
    p[1].fill_(float(opts.z_loss) if opts.z_loss else 0.0)
    p[2].fill_(float(opts.softcap) if opts.softcap is not None else 1.0)
    return p


def _strides(t):
    return (t.stride(0), t.stride(1), t.stride(2) if t.dim() == 3 else 0)


def _class_weights(tg, acc):
    """(the block's class weights, contiguous, and their total W as a (1,) device tensor) or Nones."""
    if tg.weight is None:
        return None, None
    return tg.weight.to(acc).contiguous(), tg.W.to(acc).reshape(1)


def launch_ce(x, tg, opts: LossOptions, *, grad, scale, stats=None):
    """The fused CE kernel on x (N, C) or (N, C, D), any strides: per-row losses, the row
    statistics (rows, 3) = (m, log s, A) into ``stats`` (fresh when None), and the gradient
    d(sum_i scale_i l_i)/dx into ``grad`` (like x, may be x; None: loss only).
    Returns (losses (rows,), stats), in the compute dtype."""
    acc = compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    d = x.shape[2] if x.dim() == 3 else 1
    rows, dev = n * d, x.device
    loss = torch.empty(rows, dtype=acc, device=dev)
    stats = torch.empty((rows, 3), dtype=acc, device=dev) if stats is None else stats
    if rows == 0:
        return loss, stats
    w, w_sum = _class_weights(tg, acc)
    probs, index = tg.probs, tg.index
    g = grad if grad is not None else x
    p = probs if probs is not None else x
    s, s_stride = _scale_arg(scale, acc, dev)
    block, single = block_for(c, probs is not None, acc == torch.float64, x.element_size(), _any_option(tg, opts))
    vec = schedule.vector_width(x, grad, probs)
    programs = rows if single else schedule.long_row_programs(
        rows, c * (x.element_size() + (p.element_size() if probs is not None else 0)), dev)
    warps = single_warps(block, probs is not None) if single else _warps(block)
    persistent = {} if single else {"maxnreg": persistent_maxnreg(warps)}
    _kernels()[0].ce_kernel[(programs,)](
        x, g, index.reshape(-1).contiguous() if index is not None else loss, p,
        w if w is not None else loss, w_sum if w_sum is not None else loss, s, _params(opts, acc, dev),
        loss, stats, rows, c, d, *_strides(x), *_strides(g), *_strides(p), s_stride, opts.ignore_index,
        BLOCK=block, SINGLE=single, VEC=vec, STAGES=_stages(single, tg, opts, acc), SOFT=probs is not None,
        HAS_WEIGHT=w is not None, SMOOTH=opts.label_smoothing > 0.0, HAS_CAP=opts.softcap is not None,
        WRITE_GRAD=grad is not None, ACC_F64=acc == torch.float64, num_warps=warps, **persistent,
    )
    return loss, stats


def launch_ce_grad(x, tg, opts: LossOptions, stats, *, grad, scale):
    """The gradient alone, from `launch_ce`'s stats: one read of x, one write of ``grad``."""
    acc = compute_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    d = x.shape[2] if x.dim() == 3 else 1
    rows, dev = n * d, x.device
    if rows == 0:
        return grad
    w, w_sum = _class_weights(tg, acc)
    probs, index = tg.probs, tg.index
    p = probs if probs is not None else x
    s, s_stride = _scale_arg(scale, acc, dev)
    block, single = block_for(c, probs is not None, acc == torch.float64, x.element_size(), _any_option(tg, opts))
    dummy = stats.reshape(-1)
    _kernels()[0].ce_grad_kernel[(rows,)](
        x, grad, index.reshape(-1).contiguous() if index is not None else dummy, p,
        w if w is not None else dummy, w_sum if w_sum is not None else dummy, s,
        _params(opts, acc, dev), stats, rows, c, d, *_strides(x), *_strides(grad), *_strides(p),
        s_stride, opts.ignore_index, BLOCK=block, VEC=schedule.vector_width(x, grad, probs),
        STAGES=_stages(single, tg, opts, acc), SOFT=probs is not None, HAS_WEIGHT=w is not None,
        SMOOTH=opts.label_smoothing > 0.0, HAS_CAP=opts.softcap is not None,
        ACC_F64=acc == torch.float64, num_warps=_warps(block),
    )
    return grad


def ce_forward(x, tg, opts: LossOptions, *, grad, scale):
    """`RowKernels.ce_forward` on the GPU: per-row losses (N[, D]) of x (N, C[, D]); the
    gradient d(sum_i scale_i l_i)/dx written into ``grad`` (None: loss only)."""
    loss, _ = launch_ce(x, tg, opts, grad=grad, scale=scale)
    return loss.view(x.shape[:1] + x.shape[2:])


def ce_chunk(x, tg, opts: LossOptions, *, grad=None, scale=1.0, buffers=None, x_is_scratch=False):
    """`RowKernels.ce_chunk` on the GPU: (losses, lse) of one chunk x (n, C). No buffers are
    needed (the kernel keeps its temporaries in registers; a 16-bit gradient is written in its own
    dtype), and a loss-only pass writes nothing."""
    loss, stats = launch_ce(x, tg, opts, grad=grad, scale=scale)
    per_sample = x.shape[:1] + x.shape[2:]
    return loss.view(per_sample), (stats[:, 0] + stats[:, 1]).view(per_sample)


def chunk_buffers(numel, dtype, opts, device):
    return None


def scale_grad_(g: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`RowKernels.scale_grad`: g *= factor (one element) in place, read on the device -- nothing
    is written when it is 1 (kernels_scale.py); torch's multiply for a gradient that is not one
    contiguous block."""
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    f = factor.reshape(1).to(device=g.device, dtype=acc)
    if not g.is_contiguous() or not g.is_floating_point():
        return g.mul_(f.reshape(()))
    numel = g.numel()
    if numel:
        programs = schedule.scale_programs(-(-numel // SCALE_BLOCK), g.device)
        _kernels()[2].scale_kernel[(programs,)](g, f, numel, BLOCK=SCALE_BLOCK,
                                                ACC_F64=acc == torch.float64, num_warps=16)
    return g


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


def bce_forward(x, y, w, pw, logits: bool, opts: LossOptions, grad, scale=None):
    """`RowKernels.bce_forward` on the GPU: the per-element losses (compute dtype, x's shape)
    for 'none', else their deterministic total (0-d); the gradient into ``grad`` (contiguous, as
    binary.py allocates it; None: none), times ``scale`` (a 0-d tensor or x's shape) if given."""
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
    sf, s_stride = (scale.to(acc).reshape(-1).contiguous(), int(scale.dim() > 0)) if scale is not None else (loss, 0)
    if numel:
        _kernels()[1].bce_kernel[(programs,)](
            xf, yf, wf, pwf, loss, partial, gflat if gflat is not None else loss, sf, numel, w_mod,
            pw_mod, s_stride, BLOCK=BINARY_BLOCK, LOGITS=logits, HAS_W=w is not None,
            HAS_PW=pw is not None, PER_ELEMENT=per_element, WRITE_GRAD=grad is not None,
            SCALED=scale is not None, ACC_F64=acc == torch.float64, num_warps=4,
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
            weight_grad_slice=WEIGHT_GRAD_SLICE, name="triton", scale_grad=scale_grad_,
        )
    return _ROW_KERNELS


_ROW_KERNELS = None
