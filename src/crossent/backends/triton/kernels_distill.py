"""The Triton kernels of distillation (imported only when Triton is; ops_distill.py launches them):
one program per row of a chunk, the steps of `backends/divergence.py` mirrored (Triton cannot
call those torch functions; tests/backends/triton/test_triton_distillation.py checks both agree).

distill_kernel (dense), per row: z1 = cap(x) the student's logits, z = z1 / T, u = cap_t(y) / T::

    pass 1  online max and sum of exps of z, u (and of z1 for a hard part at T != 1)
    pass 2  the divergence's sums from lp = z - m_s - log s_s, lq = u - m_t - log s_t:
            beta = 0: D = sum q (lq - lp); 1: D = sum p (lp - lq);
            else d = lp - lq + c1 - c2, kp = -p (c1 + softplus(-d)), kq = -q (c2 + softplus(d)),
            D = beta sum kq + (1 - beta) sum kp, K = sum kp
    loss    soft_weight D + hard_weight (log s1 - (z1_t - m1)), 0 where the row is not counted
    pass 3  g = soft_weight / T dD/dz + hard_weight (p1 - [c = t]), times 1 - th^2 under the
            softcap and the row's scale, written over x (every block is read before it is
            written); dD/dz: p - q, p (lp - lq) - p D, (1 - beta) (kp - p K)

topk_kernel, per row with the support S (ids not ignore_index) and the teacher's log-probs::

    the support's logits are read, then (tail) NaN is stored at them in the chunk buffer (scratch:
    the loop recomputes every chunk): pass 1 takes the rest's max and sum of exps with NaN read
    as -inf -- the classes outside S only, so p_tail is exact however small. A NaN of the caller
    among the rest is told apart by counting (more NaNs than ids in S) and makes the row nan.
    pass 2 writes e_c (p_tail - q_tail) / s_r outside S; then the gradient p_j - q_j at S.
    tail=False: zeros outside S, p'_j - q'_j at S.

Everything in float32 (float64 for float64 inputs: ACC_F64). An id or target outside [0, V)
(unchecked on a GPU, as torch's gather) reads nothing out of bounds and makes its row nan.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels import _log1p, _tanh

NEG_INF = tl.constexpr(float("-inf"))  # (a plain float global is rejected by the GPU compiler)


@triton.jit
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), stable for any x (inf at +inf, 0 at -inf)."""
    return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _expm1(x):
    """e^x - 1 accurate near 0 without libdevice (Kahan: (u - 1) x / log u with u = e^x rounded,
    which cancels u's rounding), for x <= 0."""
    u = tl.exp(x)
    um1 = u - 1.0
    return tl.where(um1 == 0.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(tl.where(um1 == 0.0, 2.0, u))))


@triton.jit
def _online(m, s, z):
    """The online softmax's fold of one block: (max, sum of exp(z - max)), -inf blocks welcome."""
    m_new = tl.maximum(m, tl.max(z, 0))
    ref = tl.where(m_new == NEG_INF, 0.0, m_new)
    return m_new, s * tl.exp(m - ref) + tl.sum(tl.exp(z - ref), 0)


@triton.jit
def _load(ptr, offs, mask, zero, ACC_F64: tl.constexpr):
    x = tl.load(ptr + offs, mask=mask, other=0.0)
    if ACC_F64:
        return x.to(tl.float64) + zero
    return x.to(tl.float32) + zero


@triton.jit
def _capped(x, cap, HAS_CAP: tl.constexpr):
    """(cap tanh(x / cap), tanh) under a softcap, else (x, 0)."""
    th = tl.zeros_like(x)
    if HAS_CAP:
        th = _tanh(x / cap)
        x = th * cap
    return x, th


@triton.jit
def _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """One block of the student: (z1, z = z1 / T, th), -inf where masked."""
    z1, th = _capped(_load(s_row, c * ss_c, mask, zero, ACC_F64), cap, HAS_CAP)
    z1 = tl.where(mask, z1, NEG_INF)
    return z1, z1 * inv_t, th


@triton.jit
def _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP: tl.constexpr, ACC_F64: tl.constexpr):
    u, _ = _capped(_load(t_row, c * st_c, mask, zero, ACC_F64), tcap, HAS_TCAP)
    return tl.where(mask, u * inv_t, NEG_INF)


@triton.jit
def _terms(z, u, mask, ms, log_ss, mt, log_st, c1, c2, MODE: tl.constexpr):
    """One block's (lp, p, q, x1, x2): MODE 0 x1 = q (lq - lp); 1 x1 = p (lp - lq); 2 x1 = kp,
    x2 = kq; each 0 where its weight is."""
    lp = (z - ms) - log_ss
    lq = (u - mt) - log_st
    p = tl.where(mask, tl.exp(lp), 0.0)
    q = tl.where(mask, tl.exp(lq), 0.0)
    x2 = tl.zeros_like(p)
    if MODE == 0:
        x1 = tl.where(q > 0, q * (lq - lp), 0.0)
    elif MODE == 1:
        x1 = tl.where(p > 0, p * (lp - lq), 0.0)
    else:
        d = tl.where((p > 0) | (q > 0), (lp - lq) + (c1 - c2), 0.0)
        x1 = tl.where(p > 0, -p * (c1 + _softplus(-d)), 0.0)
        x2 = tl.where(q > 0, -q * (c2 + _softplus(d)), 0.0)
    return p, q, x1, x2


@triton.jit
def distill_kernel(
    s_ptr, t_ptr, g_ptr, target_ptr, counted_ptr, scale_ptr, loss_ptr, params_ptr,
    V, ss_n, ss_c, st_n, st_c, sg_n, sg_c, scale_stride,
    BLOCK: tl.constexpr, MODE: tl.constexpr, SOFT: tl.constexpr, HARD: tl.constexpr, HARD_T1: tl.constexpr,
    HAS_CAP: tl.constexpr, HAS_TCAP: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC_F64: tl.constexpr,
):
    """Dense distillation of one row (the module docstring has the math). params_ptr: (beta, 1/T,
    cap, tcap, hard_weight, soft_weight, c1, c2) in the compute dtype; counted_ptr int32."""
    r = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + r * ss_n
    t_row = t_ptr + r * st_n
    g_row = g_ptr + r * sg_n
    cols = tl.arange(0, BLOCK)
    zero = tl.load(params_ptr) * 0.0
    beta = tl.load(params_ptr) + zero
    inv_t = tl.load(params_ptr + 1) + zero
    cap = tl.load(params_ptr + 2) + zero
    tcap = tl.load(params_ptr + 3) + zero
    hard_w = tl.load(params_ptr + 4) + zero
    soft_w = tl.load(params_ptr + 5) + zero
    c1 = tl.load(params_ptr + 6) + zero
    c2 = tl.load(params_ptr + 7) + zero
    counted = tl.load(counted_ptr + r) != 0

    ms, ss, mt, st, m1, s1 = zero + NEG_INF, zero, zero + NEG_INF, zero, zero + NEG_INF, zero
    for start in range(0, V, BLOCK):  # pass 1
        c = start + cols
        mask = c < V
        z1, z, _ = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
        ms, ss = _online(ms, ss, z)
        if HARD and not HARD_T1:
            m1, s1 = _online(m1, s1, z1)
        if SOFT:
            mt, st = _online(mt, st, _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64))
    log_ss = tl.log(ss)
    log_st = tl.log(st)
    loss = zero
    t_idx = zero.to(tl.int64)
    if HARD:
        t_raw = tl.load(target_ptr + r)
        bad = counted & ((t_raw < 0) | (t_raw >= V))
        t_idx = tl.where(counted & ~bad, t_raw, 0)
        x_t = tl.load(s_row + t_idx * ss_c)
        if ACC_F64:
            x_t = x_t.to(tl.float64)
        else:
            x_t = x_t.to(tl.float32)
        z1_t, th_t = _capped(x_t + zero, cap, HAS_CAP)
        if HARD_T1:
            ce = log_ss - (z1_t * inv_t - ms)
        else:
            ce = tl.log(s1) - (z1_t - m1)
        loss += hard_w * tl.where(bad, float("nan"), ce)
    big_d = zero
    big_k = zero
    if SOFT:
        for start in range(0, V, BLOCK):  # pass 2
            c = start + cols
            mask = c < V
            z1, z, th = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
            u = _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64)
            _, _, x1, x2 = _terms(z, u, mask, ms, log_ss, mt, log_st, c1, c2, MODE)
            if MODE == 2:
                big_k += tl.sum(x1, 0)
                big_d += beta * tl.sum(x2, 0) + (1.0 - beta) * tl.sum(x1, 0)
            else:
                big_d += tl.sum(x1, 0)
        loss += soft_w * big_d
    tl.store(loss_ptr + r, tl.where(counted, loss, 0.0))

    if WRITE_GRAD:  # pass 3
        factor = tl.load(scale_ptr + r * scale_stride) + zero
        for start in range(0, V, BLOCK):
            c = start + cols
            mask = c < V
            z1, z, th = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
            g = tl.zeros_like(z)
            p = tl.exp((z - ms) - log_ss)
            if SOFT:
                u = _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64)
                p, q, x1, _ = _terms(z, u, mask, ms, log_ss, mt, log_st, c1, c2, MODE)
                if MODE == 0:
                    g = p - q
                elif MODE == 1:
                    g = x1 - p * big_d
                else:
                    g = (1.0 - beta) * (x1 - p * big_k)
                g = g * (soft_w * inv_t)
            if HARD:
                if HARD_T1:
                    p1 = p
                else:
                    p1 = tl.exp((z1 - m1) - tl.log(s1))
                g += hard_w * (p1 - tl.where(c == t_idx, 1.0, 0.0))
            if HAS_CAP:
                g = g * (1.0 - th * th)
            g = tl.where(counted, g * factor, 0.0)
            tl.store(g_row + c * sg_c, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lse_masked(a, valid):
    """log sum exp over the valid entries of a small vector (a_top + log1p(rest)), -inf if none."""
    a = tl.where(valid, a, NEG_INF)
    top = tl.max(a, 0)
    at = tl.argmax(a, 0)
    ref = tl.where(top == NEG_INF, 0.0, top)
    idx = tl.arange(0, a.shape[0])
    rest = tl.sum(tl.where(valid & (idx != at), tl.exp(a - ref), 0.0), 0)
    return tl.where(top == NEG_INF, NEG_INF, ref + _log1p(rest))


@triton.jit
def topk_kernel(
    s_ptr, g_ptr, ids_ptr, lq_ptr, scale_ptr, loss_ptr, params_ptr,
    V, K, ss_n, ss_c, sg_n, sg_c, si_n, si_k, sl_n, sl_k, scale_stride, ignore_index,
    BLOCK: tl.constexpr, KBLOCK: tl.constexpr, TAIL: tl.constexpr, HAS_CAP: tl.constexpr,
    WRITE_GRAD: tl.constexpr, ACC_F64: tl.constexpr,
):
    """Top-k distillation of one row (the module docstring has the math). params_ptr: (1/T, cap)."""
    r = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + r * ss_n
    g_row = g_ptr + r * sg_n
    zero = tl.load(params_ptr) * 0.0
    inv_t = tl.load(params_ptr) + zero
    cap = tl.load(params_ptr + 1) + zero
    kk = tl.arange(0, KBLOCK)
    kmask = kk < K
    ids = tl.load(ids_ptr + r * si_n + kk * si_k, mask=kmask, other=ignore_index)
    valid = kmask & (ids != ignore_index)
    bad = tl.max(tl.where(valid & ((ids < 0) | (ids >= V)), 1, 0), 0) > 0
    valid = valid & (ids >= 0) & (ids < V)
    counted = tl.max(tl.where(valid, 1, 0), 0) > 0
    safe = tl.where(valid, ids, 0)
    lq = tl.where(valid, _load(lq_ptr + r * sl_n, kk * sl_k, kmask, zero, ACC_F64), NEG_INF)
    z1_s, th_s = _capped(_load(s_row, safe * ss_c, valid, zero, ACC_F64), cap, HAS_CAP)
    a_s = tl.where(valid, z1_s * inv_t, NEG_INF)
    q = tl.where(valid, tl.exp(lq), 0.0)
    ref = zero
    s_r = zero
    coef = zero
    if TAIL:
        tl.store(s_row + safe * ss_c, float("nan"), mask=valid)  # hide the support (scratch buffer)
        tl.debug_barrier()
        m_r = zero + NEG_INF
        n_nan = zero
        for start in range(0, V, BLOCK):  # pass 1: the rest
            c = start + tl.arange(0, BLOCK)
            mask = c < V
            x = _load(s_row, c * ss_c, mask, zero, ACC_F64)
            hidden = x != x
            n_nan += tl.sum(tl.where(mask & hidden, 1.0, 0.0), 0)
            z, _ = _capped(x, cap, HAS_CAP)
            m_r, s_r = _online(m_r, s_r, tl.where(mask & ~hidden, z * inv_t, NEG_INF))
        n_valid = tl.sum(tl.where(valid, 1.0, 0.0), 0)
        ref = tl.where(m_r == NEG_INF, 0.0, m_r)
        rest_lse = tl.where(n_nan > n_valid, float("nan"), tl.log(s_r))  # a caller's NaN among the rest
        a_rel = a_s - ref
        lse = _lse_masked(a_rel, valid)
        hi = tl.maximum(lse, rest_lse)
        lo = tl.minimum(lse, rest_lse)
        full = tl.where(hi == NEG_INF, NEG_INF, hi + _log1p(tl.exp(lo - hi)))
        lp_s = a_rel - full
        lp_tail = rest_lse - full
        lse_q = tl.minimum(_lse_masked(lq, valid), 0.0)
        q_tail = tl.maximum(-_expm1(lse_q), 0.0)
        loss = tl.sum(tl.where(q > 0, q * (lq - lp_s), 0.0), 0)
        loss += tl.where(q_tail > 0, q_tail * (tl.log(q_tail) - lp_tail), 0.0)
        g_s = tl.exp(lp_s) - q
        coef = tl.where(s_r > 0, (tl.exp(lp_tail) - q_tail) / s_r, 0.0)
    else:
        top = tl.max(a_s, 0)
        a_rel = a_s - tl.where(top == NEG_INF, 0.0, top)
        lp_n = a_rel - _lse_masked(a_rel, valid)
        lq_n = lq - _lse_masked(lq, valid)
        q_n = tl.where(valid, tl.exp(lq_n), 0.0)
        loss = tl.sum(tl.where(q_n > 0, q_n * (lq_n - lp_n), 0.0), 0)
        g_s = tl.exp(lp_n) - q_n
    loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + r, tl.where(counted, loss, 0.0))

    if WRITE_GRAD:
        factor = tl.where(counted, tl.load(scale_ptr + r * scale_stride) * inv_t, 0.0) + zero
        for start in range(0, V, BLOCK):  # pass 2: outside the support (NaN at it: 0 written)
            c = start + tl.arange(0, BLOCK)
            mask = c < V
            g = tl.zeros([BLOCK], dtype=zero.dtype)
            if TAIL:
                x = _load(s_row, c * ss_c, mask, zero, ACC_F64)
                z, th = _capped(x, cap, HAS_CAP)
                g = tl.where(x != x, 0.0, tl.exp(z * inv_t - ref) * coef)
                if HAS_CAP:
                    g = g * (1.0 - th * th)
            tl.store(g_row + c * sg_c, (g * factor).to(g_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()
        if HAS_CAP:
            g_s = g_s * (1.0 - th_s * th_s)
        tl.store(g_row + safe * sg_c, (tl.where(valid, g_s, 0.0) * factor).to(g_ptr.dtype.element_ty),
                 mask=valid)
