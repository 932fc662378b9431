"""The Triton kernels of per-token log-probabilities and entropy (imported only when Triton is;
`ops_log_probs.py` launches them). The steps of `backends/rows_log_probs.py`, mirrored line for
line (Triton cannot call those torch functions); z: the softcapped logits over the temperature T,
c: the softcap, LOG_FLOOR: rows_log_probs's::

    forward, one program per row, over the row in blocks (the online softmax):
        m = max z;  s = sum exp(z - m);  er = sum exp(z - m) max(z - m, LOG_FLOOR)
        (s and er rebased when m grows: s <- s e^d, er <- e^d (er + d s), d = m_old - m_new)
        log p_t = (z_t - m) - log s;   H = log s - er / s;   both 0 on ignored rows
    backward, one program per (row, block): no reduction, the row's m, log s, H are given
        G_c = g [c = t] - p_c (g + h (max(log p_c, LOG_FLOOR) + H)),  log p_c = (z_c - m) - log s
        times (1 - tanh(x / c)^2) / T

A block of -inf logits before the first finite one keeps s = er = 0 (its rescaling factor is
taken as 0, not exp(-inf + inf)); a row of -inf logits gives nan, as torch's log_softmax. An
out-of-range target (unchecked on a GPU, as in torch) makes its row's outputs nan. The gradient
may be written over the logits (the linear loop's chunk): each program reads its block before it
writes it. Everything in float32 (float64 for float64 inputs). The masked load, the softcap and
the range check are kernels_rows.py's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_rows import acc_zero, capped, checked_index, load_acc

LOG_FLOOR = tl.constexpr(-1e4)  # rows_log_probs.LOG_FLOOR (tests check that they agree)


@triton.jit
def _tempered(x_row, offs, mask, cap, temp, ACC_F64: tl.constexpr, HAS_CAP: tl.constexpr):
    """Step 0 for one block: (z = c tanh(x / c) / T, -inf where masked; th = tanh(x / c) or 0)."""
    x, th = capped(load_acc(x_row, offs, mask, "", ACC_F64), cap, HAS_CAP)
    return tl.where(mask, x / temp, float("-inf")), th


@triton.jit
def lp_forward_kernel(
    x_ptr, target_ptr, lp_ptr, ent_ptr, m_ptr, logs_ptr, C, sx_n, sx_c, ignore_index, params_ptr,
    BLOCK: tl.constexpr, HAS_CAP: tl.constexpr, ENTROPY: tl.constexpr, ACC_F64: tl.constexpr,
):
    """log p_t (and H) of one row; stores m and log s for backward. params: (c, T)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * sx_n
    cols = tl.arange(0, BLOCK)
    zero = acc_zero(ACC_F64)
    cap = tl.load(params_ptr)
    temp = tl.load(params_ptr + 1)
    m = zero + float("-inf")
    s = zero
    er = zero
    for start in range(0, C, BLOCK):
        c = start + cols
        mask = c < C
        z, _ = _tempered(x_row, c * sx_c, mask, cap, temp, ACC_F64, HAS_CAP)
        m_new = tl.maximum(m, tl.max(z, 0))
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # (0 while every logit so far is -inf)
        scale = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))  # (s = er = 0 then)
        e = tl.exp(z - ref)
        if ENTROPY:
            shift = tl.where(m == float("-inf"), 0.0, m - ref)
            r = tl.where(mask, tl.maximum(z - ref, LOG_FLOOR), 0.0)
            er = scale * (er + shift * s) + tl.sum(e * r, 0)
        s = s * scale + tl.sum(e, 0)
        m = m_new
    log_s = tl.log(s)
    t = tl.load(target_ptr + row)
    valid = t != ignore_index
    bad, safe = checked_index(t, valid, C)
    z_t, _ = _tempered(x_row, safe * sx_c, safe >= 0, cap, temp, ACC_F64, HAS_CAP)
    lp = tl.where(bad, float("nan"), (z_t - m) - log_s)
    tl.store(lp_ptr + row, tl.where(valid, lp, 0.0))
    tl.store(m_ptr + row, m)
    tl.store(logs_ptr + row, log_s)
    if ENTROPY:
        h = tl.where(bad, float("nan"), log_s - er / s)
        tl.store(ent_ptr + row, tl.where(valid, h, 0.0))


@triton.jit
def lp_backward_kernel(
    x_ptr, grad_ptr, target_ptr, m_ptr, logs_ptr, ent_ptr, gl_ptr, gh_ptr, C, sx_n, sx_c, sg_n, sg_c,
    params_ptr, BLOCK: tl.constexpr, HAS_CAP: tl.constexpr, HAS_G: tl.constexpr, HAS_H: tl.constexpr,
    ACC_F64: tl.constexpr,
):
    """The gradient of sum_i g_i log p_t + h_i H_i w.r.t. one block of one row's logits x.
    g, h: per row, 0 on ignored rows (the launcher's)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = c < C
    cap = tl.load(params_ptr)
    temp = tl.load(params_ptr + 1)
    z, th = _tempered(x_ptr + row * sx_n, c * sx_c, mask, cap, temp, ACC_F64, HAS_CAP)
    logp = (z - tl.load(m_ptr + row)) - tl.load(logs_ptr + row)
    p = tl.exp(logp)
    grad = tl.zeros_like(p)
    if HAS_G:
        g = tl.load(gl_ptr + row)
        grad = tl.where(c == tl.load(target_ptr + row), g, 0.0) - p * g
    if HAS_H:
        h = tl.load(gh_ptr + row)
        grad -= p * h * (tl.maximum(logp, LOG_FLOOR) + tl.load(ent_ptr + row))
    grad = grad / temp
    if HAS_CAP:
        grad = grad * (1.0 - th * th)
    tl.store(grad_ptr + row * sg_n + c * sg_c, grad, mask=mask)
