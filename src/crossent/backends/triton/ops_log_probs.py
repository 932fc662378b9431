"""Launchers of the log-probability kernels (kernels_log_probs.py) as the fused loops'
`LogProbKernels` (the signatures of backends/loops/kernels.py). No host sync: the options travel
as a device tensor made by fills, per-row upstream gradients as device tensors."""

from __future__ import annotations

import functools

import torch

from ..._options import LossOptions
from ..common import compute_dtype
from .ops import triton_next_pow2

# Classes per block: the forward loops over a row in blocks of this many (8 values per thread
# over 8 warps, as ops.LOOP_BLOCK); the backward runs one program per (row, block). Not tuned:
# no GPU was available (benchmarks/bench_gpu.py measures it).
LP_BLOCK = 2048


@functools.cache
def _kernels():
    from . import kernels_log_probs

    return kernels_log_probs


def _block(c: int) -> int:
    return min(triton_next_pow2(max(c, 1)), LP_BLOCK)


def _warps(block: int) -> int:
    return max(1, min(8, block // 256))


def _params(opts: LossOptions, acc, device):
    """(softcap or 1, temperature) in the compute dtype, by fills (no host copy)."""
    p = torch.full((2,), float(opts.temperature), dtype=acc, device=device)
    p[0].fill_(float(opts.softcap) if opts.softcap is not None else 1.0)
    return p


def forward(x, tg, opts: LossOptions, *, entropy: bool, buffers=None, x_is_scratch=False):
    """`LogProbKernels.forward`: (log p_t, H or None, m, log s) of x (n, V), any strides."""
    acc = compute_dtype(x.dtype)
    n, c = x.shape
    out = [torch.empty(n, dtype=acc, device=x.device) for _ in range(4)]
    lp, ent, m, log_s = out
    if n:
        block = _block(c)
        _kernels().lp_forward_kernel[(n,)](
            x, tg.index.contiguous(), lp, ent, m, log_s, c, x.stride(0), x.stride(1), opts.ignore_index,
            _params(opts, acc, x.device), BLOCK=block, HAS_CAP=opts.softcap is not None, ENTROPY=entropy,
            ACC_F64=acc == torch.float64, num_warps=_warps(block),
        )
    return lp, ent if entropy else None, m, log_s


def backward(x, tg, opts: LossOptions, m, log_s, entropy, g, h, *, grad, buffers=None):
    """`LogProbKernels.backward`: the gradient of x (n, V) into ``grad`` (may be x)."""
    acc = compute_dtype(x.dtype)
    n, c = x.shape
    if n == 0 or c == 0:
        return grad
    block = _block(c)
    dummy = m
    _kernels().lp_backward_kernel[(n, -(-c // block))](
        x, grad, tg.index.contiguous(), m.contiguous(), log_s.contiguous(),
        entropy.contiguous() if h is not None else dummy,
        g.contiguous() if g is not None else dummy, h.contiguous() if h is not None else dummy,
        c, x.stride(0), x.stride(1), grad.stride(0), grad.stride(1), _params(opts, acc, x.device),
        BLOCK=block, HAS_CAP=opts.softcap is not None, HAS_G=g is not None, HAS_H=h is not None,
        ACC_F64=acc == torch.float64, num_warps=_warps(block),
    )
    return grad


def buffers(numel, dtype, opts, entropy, device, *, scratch):
    """None: the kernels keep their temporaries in registers."""
    return None


def logits_rows(n: int, c: int, device) -> int:
    """Every row in one launch (nothing is allocated per row but the outputs)."""
    return max(n, 1)


def log_prob_kernels(linear_rows):
    from ..loops import LogProbKernels

    return LogProbKernels(forward=forward, backward=backward, buffers=buffers, linear_rows=linear_rows,
                          logits_rows=logits_rows)
