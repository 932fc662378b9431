"""The steps of `backends/rows.py` that every Triton kernel shares (imported only when Triton is),
written once: the compute dtype, a masked block load in it, the softcap, the online max and sum of
exps, and a class-index target's range check. The kernels (kernels.py, kernels_distill.py,
kernels_log_probs.py, kernels_binary.py) call these; Triton inlines them, so a kernel compiles as
if they were written in place (tests/backends/triton/aot_compile.py checks registers and spills).

Interpreter limits (Triton CPU, docs GPU-NOTES): no libdevice, so tanh and log1p are built from
tl.exp / tl.log here; scalar arguments are used as they come (no ``.to()`` on them).
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG_INF = tl.constexpr(float("-inf"))  # (a plain float global is rejected by the GPU compiler)


@triton.jit
def _tanh(u):
    """tanh without libdevice: an odd Taylor polynomial near 0 (|u| < 0.0625, error < 1e-12
    relative: the next term is 62/2835 u^9), else (1 - e) / (1 + e) with e = exp(-2|u|), whose
    rounding of e costs at most ~2 ulp of float32 there; sign restored."""
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    u2 = u * u
    small = a * (1.0 + u2 * (-1.0 / 3.0 + u2 * (2.0 / 15.0 + u2 * (-17.0 / 315.0))))
    t = tl.where(a < 0.0625, small, big)
    return tl.where(u < 0, -t, t)


@triton.jit
def _log1p(y):
    """log(1 + y) for y > -1 without libdevice, accurate for tiny y (Goldberg's trick:
    log(u) * y / (u - 1) with u = 1 + y rounded, which cancels the rounding of u)."""
    u = 1.0 + y
    d = u - 1.0
    return tl.where(d == 0.0, y, tl.log(u) * (y / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def acc_zero(ACC_F64: tl.constexpr):
    """0 in the compute dtype: float64 for float64 inputs, else float32."""
    if ACC_F64:
        zero = tl.full([], 0.0, tl.float64)
    else:
        zero = tl.full([], 0.0, tl.float32)
    return zero


@triton.jit
def to_acc(x, ACC_F64: tl.constexpr):
    """x converted to the compute dtype."""
    if ACC_F64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def load_acc(ptr, offs, mask, evict: tl.constexpr, ACC_F64: tl.constexpr):
    """One masked block (0 where masked) in the compute dtype; ``evict`` its L2 policy ("" for
    the default)."""
    return to_acc(tl.load(ptr + offs, mask=mask, other=0.0, eviction_policy=evict), ACC_F64)


@triton.jit
def capped(x, cap, HAS_CAP: tl.constexpr):
    """rows.capped: (cap tanh(x / cap), tanh(x / cap)) under a softcap, else (x, 0) -- the tanh
    is kept for the derivative 1 - tanh^2."""
    th = tl.zeros_like(x)
    if HAS_CAP:
        th = _tanh(x / cap)
        x = th * cap
    return x, th


@triton.jit
def ref_of(m):
    """The reference the relative sums are kept against: the running max, 0 while it is -inf."""
    return tl.where(m == NEG_INF, 0.0, m)


@triton.jit
def online(m, s, z):
    """The online softmax's fold of one block z (-inf where masked): (m', ref, s') with m' = max
    of m and the block, s' = sum exp(z - ref) over everything folded so far, ref = ref_of(m').
    Blocks of -inf before the first finite logit leave s = 0 (their rescaling factor is
    exp(-inf - ref) = 0, never exp(-inf + inf)); a row of -inf logits ends with m = -inf, s = 0,
    so log s - (z_t - ref) = nan, torch's value."""
    m_new = tl.maximum(m, tl.max(z, 0))
    ref = ref_of(m_new)
    return m_new, ref, tl.sum(tl.exp(z - ref), 0) + s * tl.exp(m - ref)


@triton.jit
def checked_index(t, valid, C):
    """(bad, safe) of class indices t where `valid` (not ignored): bad = valid but outside [0, C)
    (unchecked on a GPU, as in torch: a host check would sync; the kernels make its row nan, loud,
    never a number); safe = an index that may be read (0 where not valid or bad)."""
    bad = valid & ((t < 0) | (t >= C))
    # (no `~` on a boolean tensor: Triton 3.2's interpreter, torch 2.6's, cannot invert int1)
    return bad, tl.where(valid & (t >= 0) & (t < C), t, 0)
