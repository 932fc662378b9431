"""The Triton kernels (imported only when Triton is; `ops.py` launches them).

Cross-entropy, one program per sample row r (a row of (N, C), or the (n, d) row of a K-dim
(N, C, D) input, through strides). The steps of `backends/rows.py`, mirrored line for line
(Triton cannot call those torch functions; tests/backends/test_rows.py checks that both agree on
extreme inputs). z: the softcapped logits; w: class weights, W = sum_c w_c; eps: smoothing; zl:
z_loss; v: 1 unless ignored::

    pass 1 over the row in blocks: m = max_c z_c, s = sum_c exp(z_c - m) (online: s rescaled by
           exp(m_old - m) when the max grows), and the row sums smoothing and soft targets need,
           relative to m (rebased when it grows): wr = sum_c w_c (z_c - m) (class indices),
           ta = sum_c w_c t'_c, tr = sum_c w_c t'_c (z_c - m)
    lse  = m + log s
    hard l = v ((1-eps) w_t (log s - (z_t - m)) + eps/C (W log s - wr)) + v zl lse^2
    soft l = A log s - tr + zl lse^2,  A = ta  (over t' = (1-eps) t + eps/C)
    pass 2 (only with a gradient): g_c = k (a p_c - b_c) (dz/dx under a softcap), p_c = exp(z_c - lse)
           hard a = v ((1-eps) w_t + eps/C W + 2 zl lse), b_c = v ((1-eps) w_t [c = t] + eps/C w_c)
           soft a = A + 2 zl lse,                        b_c = w_c t'_c
           k: the per-row gradient scale (1/den for 'mean', folded in forward)

A row that fits one block (C <= SINGLE_BLOCK_MAX, see ops.py) is loaded once and its gradient
written from registers: one read and one write of the logits, the two-pass floor. Longer rows are
read twice; the second read of a row follows the first within the same program, so on a GPU it is
served mostly from L2 (132 SMs x a 128K-class bfloat16 row = 34 MB < H200's 60 MB L2) -- a design
expectation to be checked with benchmarks/bench_gpu.py, not a measurement.

The gradient may be written over the logits (``grad`` aliasing ``x``: in-place backward, and the
linear loss's chunk buffer): every block is read before the same block is written.

Interpreter limits (Triton 3.9 CPU, docs GPU-NOTES): no libdevice, so tanh and log1p are built
from tl.exp / tl.log below; scalar arguments are used as they come (no ``.to()`` on them).
Everything is computed in float32 (float64 for float64 inputs: ACC_F64).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _load_z(x_ptr, offs, mask, cap, ACC_F64: tl.constexpr, HAS_CAP: tl.constexpr):
    """The (softcapped) logits of one block in the compute dtype; -inf where masked. Also returns
    th = tanh(x / cap) (or 0) for the softcap's derivative."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if ACC_F64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    th = tl.zeros_like(x)
    if HAS_CAP:
        th = _tanh(x / cap)
        x = th * cap
    z = tl.where(mask, x, float("-inf"))
    return z, th


@triton.jit
def _ref(m):
    """The reference the relative sums are kept against: the running max, 0 while it is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _stats_block(z, mask, w, t, m, s, wr, ws, ta, tr, SOFT: tl.constexpr, SMOOTH: tl.constexpr):
    """Step 1 of rows.py, folded block by block (the online softmax): the running max m, the sum
    of exps s (rescaled when m grows), and the sums relative to the reference `_ref(m)`: wr =
    sum w (z - ref) with ws = sum w (class indices with smoothing), tr = sum w t' (z - ref) with
    ta = sum w t' (probabilities; t is t' already). When m grows they are rebased as rows.rebase
    does: by their weight times the shift of the reference."""
    m_new = tl.maximum(m, tl.max(z, 0))
    # (m_new is -inf only for a row of -inf logits: torch's nan, from -inf - -inf, follows)
    s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
    ref = _ref(m_new)
    shift = _ref(m) - ref
    r = tl.where(mask, z - ref, 0.0)
    if SMOOTH and not SOFT:
        wr = wr + ws * shift + tl.sum(w * r, 0)
        ws += tl.sum(w, 0)
    if SOFT:
        tr = tr + ta * shift + tl.sum(w * t * r, 0)
        ta += tl.sum(w * t, 0)
    return m_new, s, wr, ws, ta, tr


@triton.jit
def _block_inputs(x_row, p_row, weight_ptr, c, mask, sx_c, sp_c, cap, eps, C, zero,
                  ACC_F64: tl.constexpr, HAS_CAP: tl.constexpr, SOFT: tl.constexpr,
                  HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """One block's z (-inf where masked), tanh, class weights, probabilities (smoothed: t' =
    (1-eps) t + eps/C itself, so that a -inf logit gives t' z = -inf, torch's inf, where
    (1-eps) t z + eps/C z would be 0 * -inf = nan)."""
    z, th = _load_z(x_row, c * sx_c, mask, cap, ACC_F64, HAS_CAP)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + c, mask=mask, other=0.0) + zero
    else:
        w = tl.where(mask, 1.0, 0.0) + zero
    if SOFT:
        t = tl.load(p_row + c * sp_c, mask=mask, other=0.0) + zero
        if SMOOTH:
            t = tl.where(mask, (1.0 - eps) * t + eps / C, 0.0)
    else:
        t = tl.zeros_like(w)
    return z, th, w, t


@triton.jit
def ce_kernel(
    x_ptr, grad_ptr, target_ptr, probs_ptr, weight_ptr, wsum_ptr, scale_ptr, loss_ptr, lse_ptr,
    C, D, sx_n, sx_c, sx_d, sg_n, sg_c, sg_d, sp_n, sp_c, sp_d, scale_stride,
    ignore_index, params_ptr,
    BLOCK: tl.constexpr, SINGLE: tl.constexpr, SOFT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr, HAS_ZL: tl.constexpr, HAS_CAP: tl.constexpr, WRITE_GRAD: tl.constexpr,
    ACC_F64: tl.constexpr,
):
    """Loss (and gradient) of one sample row; the module docstring has the math. Rows index
    (n, d) = (r // D, r % D); strides in elements (sx_*: logits, sg_*: gradient, sp_*: probs).
    SINGLE: the whole row is one block (C <= BLOCK), kept in registers for the gradient.
    params_ptr: (eps, zl, cap) in the compute dtype (a float argument would be float32)."""
    r = tl.program_id(0).to(tl.int64)
    n = r // D
    d = r % D
    x_row = x_ptr + n * sx_n + d * sx_d
    g_row = grad_ptr + n * sg_n + d * sg_d
    p_row = probs_ptr + n * sp_n + d * sp_d
    cols = tl.arange(0, BLOCK)
    if ACC_F64:
        zero = tl.full([], 0.0, tl.float64)
    else:
        zero = tl.full([], 0.0, tl.float32)
    eps = tl.load(params_ptr)
    zl = tl.load(params_ptr + 1)
    cap = tl.load(params_ptr + 2)

    # ---- pass 1 (step 1): max, sum of exps, the relative row sums
    m = zero + float("-inf")
    s = zero
    wr = zero  # sum_c w_c (z_c - ref)
    ws = zero  # sum_c w_c over the blocks so far
    ta = zero  # sum_c w_c t'_c
    tr = zero  # sum_c w_c t'_c (z_c - ref)
    if SINGLE:
        mask1 = cols < C
        z1, th1, w1, t1 = _block_inputs(x_row, p_row, weight_ptr, cols, mask1, sx_c, sp_c, cap,
                                        eps, C, zero, ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
        m, s, wr, ws, ta, tr = _stats_block(z1, mask1, w1, t1, m, s, wr, ws, ta, tr, SOFT, SMOOTH)
    else:
        for start in range(0, C, BLOCK):
            c = start + cols
            mask = c < C
            z, th, w, t = _block_inputs(x_row, p_row, weight_ptr, c, mask, sx_c, sp_c, cap, eps,
                                        C, zero, ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
            m, s, wr, ws, ta, tr = _stats_block(z, mask, w, t, m, s, wr, ws, ta, tr, SOFT, SMOOTH)
    log_s = tl.log(s)
    lse = m + log_s

    # ---- step 3: the loss, and the gradient's row coefficients a (of p) and coef_t (at the target)
    if HAS_WEIGHT:
        W = tl.load(wsum_ptr) + zero
    else:
        W = zero + C
    if SOFT:  # (t' smoothed already)
        A = ta
        loss = A * log_s - tr
        if HAS_ZL:
            loss += zl * lse * lse
        v = zero + 1.0
        a = A
        coef_t = zero
        t_idx = -1
    else:
        t_idx = tl.load(target_ptr + r)
        loss, a, coef_t, v = _hard_row_loss(x_row, weight_ptr, t_idx, ignore_index, sx_c, m, log_s,
                                            lse, W, wr, eps, zl, cap, C, zero, ACC_F64, HAS_WEIGHT,
                                            SMOOTH, HAS_ZL, HAS_CAP)
    tl.store(loss_ptr + r, loss)
    tl.store(lse_ptr + r, lse)

    # ---- pass 2: the gradient, k (a p_c - b_c) [* (1 - th_c^2) under a softcap]
    if WRITE_GRAD:
        k = tl.load(scale_ptr + r * scale_stride) + zero
        if HAS_ZL:
            a += 2.0 * zl * lse * v
        if SINGLE:
            g1 = _grad_block(z1, th1, w1, t1, cols, m, log_s, a, coef_t, t_idx, v, k, eps, C,
                             SOFT, SMOOTH, HAS_CAP)
            tl.store(g_row + cols * sg_c, g1, mask=mask1)
        else:
            for start in range(0, C, BLOCK):
                c = start + cols
                mask = c < C
                z, th, w, t = _block_inputs(x_row, p_row, weight_ptr, c, mask, sx_c, sp_c, cap,
                                            eps, C, zero, ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
                g = _grad_block(z, th, w, t, c, m, log_s, a, coef_t, t_idx, v, k, eps, C,
                                SOFT, SMOOTH, HAS_CAP)
                tl.store(g_row + c * sg_c, g, mask=mask)


@triton.jit
def _hard_row_loss(x_row, weight_ptr, t_idx, ignore_index, sx_c, m, log_s, lse, W, wr, eps, zl, cap,
                   C, zero, ACC_F64: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                   HAS_ZL: tl.constexpr, HAS_CAP: tl.constexpr):
    """Step 3 of rows.py for a class-index row: (loss, a without z_loss, (1-eps) w_t v, v)."""
    valid = t_idx != ignore_index
    # An out-of-range class (unchecked on a GPU, as in torch: a host check would sync) reads
    # nothing out of bounds and makes its row's loss and gradient nan: loud, never a number.
    bad = valid & ((t_idx < 0) | (t_idx >= C))
    safe = tl.where(valid & ~bad, t_idx, 0)
    xt = tl.load(x_row + safe * sx_c)
    if ACC_F64:
        z_t = xt.to(tl.float64)
    else:
        z_t = xt.to(tl.float32)
    if HAS_CAP:
        z_t = _tanh(z_t / cap) * cap
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + safe) + zero
    else:
        w_t = zero + 1.0
    ce = (log_s - (z_t - _ref(m))) * w_t
    if SMOOTH:
        ce = (1.0 - eps) * ce + (eps / C) * (W * log_s - wr)
    if HAS_ZL:
        ce += zl * lse * lse
    ce = tl.where(bad, float("nan"), ce)
    v = tl.where(bad, float("nan"), tl.where(valid, 1.0, 0.0) + zero)
    coef_t = (1.0 - eps) * w_t * v
    a = coef_t
    if SMOOTH:
        a += (eps / C) * W * v
    return tl.where(valid, ce, 0.0), a, coef_t, v


@triton.jit
def _grad_block(z, th, w, t, c, m, log_s, a, coef_t, t_idx, v, k, eps, C, SOFT: tl.constexpr,
                SMOOTH: tl.constexpr, HAS_CAP: tl.constexpr):
    """Step 4: k (a p_c - b_c) for one block (times dz/dx = 1 - tanh^2 under a softcap), with
    p_c = exp((z_c - m) - log s): exp(z_c - lse) would carry lse's rounding at a large offset."""
    g = a * tl.exp((z - m) - log_s)
    if SOFT:
        g -= w * t  # (t = t', smoothed)
    else:
        g = tl.where(c == t_idx, g - coef_t, g)
        if SMOOTH:
            g -= (eps / C) * w * v
    if HAS_CAP:
        g = g * (1.0 - th * th)
    return g * k


@triton.jit
def bce_kernel(
    x_ptr, y_ptr, w_ptr, pw_ptr, loss_ptr, partial_ptr, grad_ptr, numel, w_mod, pw_mod,
    BLOCK: tl.constexpr, LOGITS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
    PER_ELEMENT: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC_F64: tl.constexpr,
):
    """Elementwise binary cross-entropy, loss and gradient in one pass (flat contiguous tensors;
    w / pw indexed modulo w_mod / pw_mod: a trailing-dims broadcast, e.g. pos_weight (C,)).

        on logits          l = w (pw y softplus(-x) + (1-y) softplus(x))
                             = w ((1-y) x + k softplus(-x)),  k = 1 + (pw-1) y
                           dl/dx = w (k sigmoid(x) - pw y)
        on probabilities   l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))
                           dl/dp = w (p - y) / max(p (1-p), 1e-12)     (torch's clamps)

    softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)) is stable for any x; the first form of l
    has no cancellation (torch's, the second, loses the tiny losses of confident logits). PER_ELEMENT: the losses
    are stored (reduction 'none'); else each program stores the sum of its block (a fixed-order
    tree within the block), summed by the caller in a fixed order: deterministic.
    """
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    x = tl.load(x_ptr + i, mask=mask, other=0.5)
    y = tl.load(y_ptr + i, mask=mask, other=0.0)
    if ACC_F64:
        x = x.to(tl.float64)
        y = y.to(tl.float64)
    else:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
    if LOGITS:
        # l = pw y softplus(-x) + (1-y) softplus(x): two non-negative terms, where the textbook
        # (1-y) x + k softplus(-x) cancels (x = -30, y = 0: -30 + 30.0000...01 = 0 in float32)
        e = tl.exp(-tl.abs(x))
        l1p = _log1p(e)
        sp_neg = tl.maximum(-x, 0.0) + l1p  # softplus(-x)
        sp_pos = tl.maximum(x, 0.0) + l1p  # softplus(x)
        sig = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        if HAS_PW:
            pw = tl.load(pw_ptr + i % pw_mod, mask=mask, other=1.0) + tl.zeros_like(x)
            k = 1.0 + (pw - 1.0) * y
            loss = pw * y * sp_neg + (1.0 - y) * sp_pos
            g = k * sig - pw * y
        else:
            loss = y * sp_neg + (1.0 - y) * sp_pos
            g = sig - y
        # torch's value at x = -inf: nan for every y (its formula is -inf + inf there)
        loss = tl.where(x == float("-inf"), float("nan"), loss)
    else:
        logp = tl.maximum(tl.log(x), -100.0)
        log1mp = tl.maximum(_log1p(-x), -100.0)
        loss = -(y * logp + (1.0 - y) * log1mp)
        g = (x - y) / tl.maximum(x * (1.0 - x), 9.999999960041972e-13)
    if HAS_W:
        w = tl.load(w_ptr + i % w_mod, mask=mask, other=0.0) + tl.zeros_like(x)
        loss = loss * w
        g = g * w
    if PER_ELEMENT:
        tl.store(loss_ptr + i, loss, mask=mask)
    else:
        tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.where(mask, loss, 0.0), 0))
    if WRITE_GRAD:
        tl.store(grad_ptr + i, g, mask=mask)
