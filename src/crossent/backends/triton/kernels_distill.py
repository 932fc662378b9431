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
(unchecked on a GPU, as torch's gather) reads nothing out of bounds and makes its row nan. The
steps shared with the other Triton kernels (the masked load, the softcap, the online softmax, the
range check) are kernels_rows.py's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_rows import (
    NEG_INF,
    _log1p,
    acc_zero,
    capped,
    checked_index,
    load_acc,
    online,
    ref_of,
    to_acc,
)


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
def _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """One block of the student: (z1, z = z1 / T, th), -inf where masked."""
    z1, th = capped(load_acc(s_row, c * ss_c, mask, "", ACC_F64), cap, HAS_CAP)
    z1 = tl.where(mask, z1, NEG_INF)
    return z1, z1 * inv_t, th


@triton.jit
def _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP: tl.constexpr, ACC_F64: tl.constexpr):
    u, _ = capped(load_acc(t_row, c * st_c, mask, "", ACC_F64), tcap, HAS_TCAP)
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
def _distill_params(params_ptr, ACC_F64: tl.constexpr):
    """(zero, beta, 1/T, cap, tcap, hard_weight, soft_weight, c1, c2) from params_ptr (in the
    compute dtype)."""
    zero = acc_zero(ACC_F64)
    return (zero, tl.load(params_ptr) + zero, tl.load(params_ptr + 1) + zero, tl.load(params_ptr + 2) + zero,
            tl.load(params_ptr + 3) + zero, tl.load(params_ptr + 4) + zero, tl.load(params_ptr + 5) + zero,
            tl.load(params_ptr + 6) + zero, tl.load(params_ptr + 7) + zero)


@triton.jit
def _softmax_stats(s_row, t_row, V, ss_c, st_c, cap, tcap, inv_t, zero, BLOCK: tl.constexpr, SOFT: tl.constexpr,
                   HARD: tl.constexpr, HARD_T1: tl.constexpr, HAS_CAP: tl.constexpr, HAS_TCAP: tl.constexpr,
                   ACC_F64: tl.constexpr):
    """Pass 1: the online max and sum of exps of z (student / T), u (teacher / T) and z1 (the
    student at T = 1, for a hard part at T != 1): (ms, ss, mt, st, m1, s1)."""
    ms, ss, mt, st, m1, s1 = zero + NEG_INF, zero, zero + NEG_INF, zero, zero + NEG_INF, zero
    cols = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        c = start + cols
        mask = c < V
        z1, z, th = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
        ms, _ref_s, ss = online(ms, ss, z)
        if HARD and not HARD_T1:
            m1, _ref_1, s1 = online(m1, s1, z1)
        if SOFT:
            u = _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64)
            mt, _ref_t, st = online(mt, st, u)
    return ms, ss, mt, st, m1, s1


@triton.jit
def _hard_ce(target_ptr, r, counted, s_row, ss_c, V, cap, inv_t, ms, log_ss, m1, s1, zero,
             HARD_T1: tl.constexpr, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """The hard part's cross-entropy at T = 1, log s1 - (z1_t - m1) (nan for a target outside
    [0, V)), and the index to read at (t_idx)."""
    bad, t_idx = checked_index(tl.load(target_ptr + r), counted, V)
    z1_t, th_t = capped(to_acc(tl.load(s_row + t_idx * ss_c), ACC_F64), cap, HAS_CAP)
    if HARD_T1:
        ce = log_ss - (z1_t * inv_t - ms)
    else:
        ce = tl.log(s1) - (z1_t - m1)
    return tl.where(bad, float("nan"), ce), t_idx


@triton.jit
def _divergence(s_row, t_row, V, ss_c, st_c, cap, tcap, inv_t, ms, log_ss, mt, log_st, beta, c1, c2, zero,
                BLOCK: tl.constexpr, MODE: tl.constexpr, HAS_CAP: tl.constexpr, HAS_TCAP: tl.constexpr,
                ACC_F64: tl.constexpr):
    """Pass 2: (D, K) -- the divergence and, for the mixture (MODE 2), K = sum kp."""
    big_d = zero
    big_k = zero
    cols = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        c = start + cols
        mask = c < V
        z1, z, th = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
        u = _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64)
        p, q, x1, x2 = _terms(z, u, mask, ms, log_ss, mt, log_st, c1, c2, MODE)
        if MODE == 2:
            big_k += tl.sum(x1, 0)
            big_d += beta * tl.sum(x2, 0) + (1.0 - beta) * tl.sum(x1, 0)
        else:
            big_d += tl.sum(x1, 0)
    return big_d, big_k


@triton.jit
def _distill_grad(s_row, t_row, g_row, g_ptr, V, ss_c, st_c, sg_c, t_idx, counted, factor, cap, tcap, inv_t,
                  beta, hard_w, soft_w, c1, c2, ms, log_ss, mt, log_st, m1, s1, big_d, big_k, zero,
                  BLOCK: tl.constexpr, MODE: tl.constexpr, SOFT: tl.constexpr, HARD: tl.constexpr,
                  HARD_T1: tl.constexpr, HAS_CAP: tl.constexpr, HAS_TCAP: tl.constexpr, ACC_F64: tl.constexpr):
    """Pass 3: the row's gradient (the module docstring), over x (every block is read before it
    is written)."""
    cols = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        c = start + cols
        mask = c < V
        z1, z, th = _student(s_row, c, mask, ss_c, cap, inv_t, zero, HAS_CAP, ACC_F64)
        g = tl.zeros_like(z)
        p = tl.exp((z - ms) - log_ss)
        if SOFT:
            u = _teacher(t_row, c, mask, st_c, tcap, inv_t, zero, HAS_TCAP, ACC_F64)
            p, q, x1, _x2 = _terms(z, u, mask, ms, log_ss, mt, log_st, c1, c2, MODE)
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
    zero, beta, inv_t, cap, tcap, hard_w, soft_w, c1, c2 = _distill_params(params_ptr, ACC_F64)
    counted = tl.load(counted_ptr + r) != 0

    ms, ss, mt, st, m1, s1 = _softmax_stats(s_row, t_row, V, ss_c, st_c, cap, tcap, inv_t, zero, BLOCK, SOFT,
                                            HARD, HARD_T1, HAS_CAP, HAS_TCAP, ACC_F64)
    log_ss = tl.log(ss)
    log_st = tl.log(st)
    loss = zero
    t_idx = zero.to(tl.int64)
    if HARD:
        ce, t_idx = _hard_ce(target_ptr, r, counted, s_row, ss_c, V, cap, inv_t, ms, log_ss, m1, s1, zero,
                             HARD_T1, HAS_CAP, ACC_F64)
        loss += hard_w * ce
    big_d = zero
    big_k = zero
    if SOFT:
        big_d, big_k = _divergence(s_row, t_row, V, ss_c, st_c, cap, tcap, inv_t, ms, log_ss, mt, log_st, beta,
                                   c1, c2, zero, BLOCK, MODE, HAS_CAP, HAS_TCAP, ACC_F64)
        loss += soft_w * big_d
    tl.store(loss_ptr + r, tl.where(counted, loss, 0.0))

    if WRITE_GRAD:
        factor = tl.load(scale_ptr + r * scale_stride) + zero
        _distill_grad(s_row, t_row, g_ptr + r * sg_n, g_ptr, V, ss_c, st_c, sg_c, t_idx, counted, factor, cap,
                      tcap, inv_t, beta, hard_w, soft_w, c1, c2, ms, log_ss, mt, log_st, m1, s1, big_d, big_k,
                      zero, BLOCK, MODE, SOFT, HARD, HARD_T1, HAS_CAP, HAS_TCAP, ACC_F64)


@triton.jit
def _lse_masked(a, valid):
    """log sum exp over the valid entries of a small vector (a_top + log1p(rest)), -inf if none."""
    a = tl.where(valid, a, NEG_INF)
    top = tl.max(a, 0)
    at = tl.argmax(a, 0)
    ref = ref_of(top)
    idx = tl.arange(0, a.shape[0])
    rest = tl.sum(tl.where(valid & (idx != at), tl.exp(a - ref), 0.0), 0)
    return tl.where(top == NEG_INF, NEG_INF, ref + _log1p(rest))


@triton.jit
def _support(s_row, ids_ptr, lq_ptr, r, V, K, ss_c, si_n, si_k, sl_n, sl_k, ignore_index, cap, inv_t,
             KBLOCK: tl.constexpr, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """The row's support S (ids not ignore_index): (valid, bad, counted, safe, lq, a_s, th_s):
    valid marks S's ids in [0, V), bad a row with an id outside it, counted a row with S not
    empty, safe the ids to read at, lq the teacher's log-probs (-inf off S), a_s = z1 / T (-inf
    off S), th_s the softcap's tanh."""
    kk = tl.arange(0, KBLOCK)
    kmask = kk < K
    ids = tl.load(ids_ptr + r * si_n + kk * si_k, mask=kmask, other=ignore_index)
    valid = kmask & (ids != ignore_index)
    out, safe = checked_index(ids, valid, V)
    bad = tl.max(tl.where(out, 1, 0), 0) > 0
    valid = valid & (safe == ids)  # in [0, V): checked_index kept the id (no `~`: kernels_rows)
    counted = tl.max(tl.where(valid, 1, 0), 0) > 0
    lq = tl.where(valid, load_acc(lq_ptr + r * sl_n, kk * sl_k, kmask, "", ACC_F64), NEG_INF)
    z1_s, th_s = capped(load_acc(s_row, safe * ss_c, valid, "", ACC_F64), cap, HAS_CAP)
    return valid, bad, counted, safe, lq, tl.where(valid, z1_s * inv_t, NEG_INF), th_s


@triton.jit
def _rest_lse(s_row, V, ss_c, valid, cap, inv_t, zero, BLOCK: tl.constexpr, HAS_CAP: tl.constexpr,
              ACC_F64: tl.constexpr):
    """Pass 1 of the tail (the support already marked NaN): (ref, s_r, log s_r) of the classes
    outside S, relative to their max; log s_r is nan if a caller's NaN is among them (more NaNs
    than ids in S)."""
    m_r = zero + NEG_INF
    s_r = zero
    n_nan = zero
    for start in range(0, V, BLOCK):
        c = start + tl.arange(0, BLOCK)
        mask = c < V
        x = load_acc(s_row, c * ss_c, mask, "", ACC_F64)
        hidden = x != x
        n_nan += tl.sum(tl.where(mask & hidden, 1.0, 0.0), 0)
        z, th = capped(x, cap, HAS_CAP)
        m_r, ref, s_r = online(m_r, s_r, tl.where(mask & (x == x), z * inv_t, NEG_INF))
    n_valid = tl.sum(tl.where(valid, 1.0, 0.0), 0)
    return ref_of(m_r), s_r, tl.where(n_nan > n_valid, float("nan"), tl.log(s_r))


@triton.jit
def _tail_terms(a_s, lq, q, valid, ref, s_r, rest_lse):
    """With the tail bucket: (loss, the gradient at S, the factor of e_c outside S)."""
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
    coef = tl.where(s_r > 0, (tl.exp(lp_tail) - q_tail) / s_r, 0.0)
    return loss, tl.exp(lp_s) - q, coef


@triton.jit
def _renormalized_terms(a_s, lq, valid):
    """Without the tail: both sides renormalized over S: (loss, the gradient at S)."""
    a_rel = a_s - ref_of(tl.max(a_s, 0))
    lp_n = a_rel - _lse_masked(a_rel, valid)
    lq_n = lq - _lse_masked(lq, valid)
    q_n = tl.where(valid, tl.exp(lq_n), 0.0)
    loss = tl.sum(tl.where(q_n > 0, q_n * (lq_n - lp_n), 0.0), 0)
    return loss, tl.exp(lp_n) - q_n


@triton.jit
def _topk_grad(s_row, g_row, g_ptr, V, ss_c, sg_c, safe, valid, g_s, th_s, ref, coef, factor, cap, inv_t, zero,
               BLOCK: tl.constexpr, TAIL: tl.constexpr, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """Pass 2: e_c coef outside S (NaN marks S: 0 written there; zeros without the tail), then
    the gradient at S; everything times the row's factor."""
    for start in range(0, V, BLOCK):
        c = start + tl.arange(0, BLOCK)
        mask = c < V
        g = tl.zeros([BLOCK], dtype=zero.dtype)
        if TAIL:
            x = load_acc(s_row, c * ss_c, mask, "", ACC_F64)
            z, th = capped(x, cap, HAS_CAP)
            g = tl.where(x != x, 0.0, tl.exp(z * inv_t - ref) * coef)
            if HAS_CAP:
                g = g * (1.0 - th * th)
        tl.store(g_row + c * sg_c, (g * factor).to(g_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()
    if HAS_CAP:
        g_s = g_s * (1.0 - th_s * th_s)
    tl.store(g_row + safe * sg_c, (tl.where(valid, g_s, 0.0) * factor).to(g_ptr.dtype.element_ty), mask=valid)


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
    zero = acc_zero(ACC_F64)
    inv_t = tl.load(params_ptr) + zero
    cap = tl.load(params_ptr + 1) + zero
    valid, bad, counted, safe, lq, a_s, th_s = _support(s_row, ids_ptr, lq_ptr, r, V, K, ss_c, si_n, si_k, sl_n,
                                                        sl_k, ignore_index, cap, inv_t, KBLOCK, HAS_CAP, ACC_F64)
    ref = zero
    coef = zero
    if TAIL:
        tl.store(s_row + safe * ss_c, float("nan"), mask=valid)  # hide the support (scratch buffer)
        tl.debug_barrier()
        ref, s_r, rest_lse = _rest_lse(s_row, V, ss_c, valid, cap, inv_t, zero, BLOCK, HAS_CAP, ACC_F64)
        loss, g_s, coef = _tail_terms(a_s, lq, tl.where(valid, tl.exp(lq), 0.0), valid, ref, s_r, rest_lse)
    else:
        loss, g_s = _renormalized_terms(a_s, lq, valid)
    tl.store(loss_ptr + r, tl.where(counted, tl.where(bad, float("nan"), loss), 0.0))
    if WRITE_GRAD:
        factor = tl.where(counted, tl.load(scale_ptr + r * scale_stride) * inv_t, 0.0) + zero
        _topk_grad(s_row, g_ptr + r * sg_n, g_ptr, V, ss_c, sg_c, safe, valid, g_s, th_s, ref, coef, factor, cap,
                   inv_t, zero, BLOCK, TAIL, HAS_CAP, ACC_F64)
