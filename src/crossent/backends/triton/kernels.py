"""The Triton cross-entropy kernels (imported only when Triton is; `ops.py` launches them).

One sample row r at a time (a row of (N, C), or the (n, d) row of a K-dim (N, C, D) input, through
strides). The steps of `backends/rows.py`, mirrored line for line (Triton cannot call those torch
functions; tests/backends/test_rows.py checks that both agree on extreme inputs). z: the softcapped
logits; w: class weights, W = sum_c w_c; eps: smoothing; zl: z_loss; v: 1 unless ignored::

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

Passes over the logits (HBM traffic, the floor is one read and one write):
  ce_kernel, SINGLE (C <= ops.SINGLE_BLOCK_MAX): one program per row; the row is loaded once,
      held in registers, its gradient written from them: 1 read + 1 write.
  ce_kernel, loop (longer rows): a persistent grid (schedule.py: about one program per SM), each
      program streaming whole rows, pass 2 right after pass 1 of the same row; pass-1 loads are
      marked evict_last and the gradient's stores evict_first, so that while at most
      programs x row-bytes are in flight (34 MB for 132 Llama-3 bfloat16 rows) the second read
      is an L2 hit: 1 read + 1 write from HBM when that fits the L2, at most 2 reads + 1 write.
  ce_grad_kernel: the gradient alone from forward's saved row statistics (m, log s, A): 1 read +
      1 write, after a loss-only ce_kernel (1 read). Meant for a torch.compile custom op whose
      backward is a separate op (not wired yet: issue 26); tested under the interpreter and
      compiled for sm_90 by the suite.
The block loops are software-pipelined (tl.range num_stages: STAGES blocks in flight per program).

Vector accesses for every class count: a row's first element is 16-byte aligned only when the row
stride is a multiple of VEC = 16 / element size (not for 1000, 30522 or 50257 classes). So each
row is cut into an aligned body [head, head + L) of whole VEC-element vectors -- its masks are
constant over each vector, so loads and stores compile to 16-byte accesses -- and the edges: the
< VEC classes before it and after it, one small (2 VEC,) masked block. VEC = 1 (strided class dim,
operands of different alignment): no edges, the body is the row. Reductions then run in an order
that depends on the row's alignment in memory: deterministic for a given tensor layout.

The gradient may be written over the logits (``grad`` aliasing ``x``: in-place backward, and the
linear loss's chunk buffer): every block is read before the same block is written.

The steps shared with the other Triton kernels (the compute dtype, the masked load, the softcap,
the online max and sum of exps, a target's validity) are kernels_rows.py's; the interpreter's
limits are said there. Everything is computed in float32 (float64 for float64 inputs: ACC_F64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_rows import acc_zero, capped, checked_index, load_acc, online, ref_of, to_acc


@triton.jit
def _layout(o, C, VEC: tl.constexpr):
    """(head, L) of a row whose first element is at element offset o: the body [head, head + L)
    starts at a multiple of VEC and holds whole vectors; classes [0, head) and [head + L, C) are
    the edges (fewer than VEC each)."""
    if VEC == 1:
        head = o * 0
        L = C + head
    else:
        head = tl.minimum((VEC - o % VEC) % VEC, C)
        L = ((C - head) // VEC) * VEC
    return head, tl.multiple_of(L, VEC)


@triton.jit
def _edges(head, L, C, VEC: tl.constexpr):
    """The edge classes as one (2 VEC,) block: (class index, mask)."""
    e = tl.arange(0, 2 * VEC)
    c = tl.where(e < VEC, e, head + L + e - VEC)
    return c, tl.where(e < VEC, e < head, c < C)


@triton.jit
def _row(r, x_ptr, grad_ptr, probs_ptr, C, D, sx_n, sx_c, sx_d, sg_n, sg_c, sg_d, sp_n, sp_c, sp_d,
         VEC: tl.constexpr):
    """Where row r = (n, d) = (r // D, r % D) lies: (x_row, g_row, p_row) its class 0 in the logits,
    the gradient and the probabilities; (xb, gb, pb) the same at its aligned body; (head, L)."""
    n = r // D
    d = r % D
    ox, og, op = n * sx_n + d * sx_d, n * sg_n + d * sg_d, n * sp_n + d * sp_d
    head, L = _layout(ox, C, VEC)
    xb = x_ptr + tl.multiple_of(ox + head * sx_c, VEC)
    gb = grad_ptr + tl.multiple_of(og + head * sg_c, VEC)
    pb = probs_ptr + tl.multiple_of(op + head * sp_c, VEC)
    return x_ptr + ox, grad_ptr + og, probs_ptr + op, xb, gb, pb, head, L


@triton.jit
def _options(params_ptr, wsum_ptr, C, zero, HAS_WEIGHT: tl.constexpr):
    """(eps, zl, cap, W): smoothing, z_loss and softcap from params_ptr (in the compute dtype: a
    float argument would be float32), W = sum_c w_c (C without class weights)."""
    eps = tl.load(params_ptr)
    zl = tl.load(params_ptr + 1)
    cap = tl.load(params_ptr + 2)
    if HAS_WEIGHT:
        W = tl.load(wsum_ptr) + zero
    else:
        W = zero + C
    return eps, zl, cap, W


@triton.jit
def _block_inputs(xb, pb, weight_ptr, c, offs, mask, sx_c, sp_c, cap, eps, C, zero, evict: tl.constexpr,
                  ACC_F64: tl.constexpr, HAS_CAP: tl.constexpr, SOFT: tl.constexpr,
                  HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """One block of classes c (logits at xb + offs * sx_c): z (-inf where masked), th = tanh(x /
    cap) (0 without a softcap, for its derivative), class weights w, probabilities t (smoothed:
    t' = (1-eps) t + eps/C itself, so that a -inf logit gives t' z = -inf, torch's inf, where
    (1-eps) t z + eps/C z would be 0 * -inf = nan)."""
    x, th = capped(load_acc(xb, offs * sx_c, mask, evict, ACC_F64), cap, HAS_CAP)
    z = tl.where(mask, x, float("-inf"))
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + c, mask=mask, other=0.0) + zero
    else:
        w = tl.where(mask, 1.0, 0.0) + zero
    if SOFT:
        t = load_acc(pb, offs * sp_c, mask, evict, ACC_F64)
        if SMOOTH:
            t = tl.where(mask, (1.0 - eps) * t + eps / C, 0.0)
    else:
        t = tl.zeros_like(w)
    return z, th, w, t


@triton.jit
def _stats_block(z, mask, w, t, m, s, wr, ws, ta, tr, SOFT: tl.constexpr, SMOOTH: tl.constexpr):
    """Step 1 of rows.py, folded block by block (kernels_rows.online): the running max m, the sum
    of exps s, and the sums relative to the reference `ref_of(m)`: wr = sum w (z - ref) with ws =
    sum w (class indices with smoothing), tr = sum w t' (z - ref) with ta = sum w t'
    (probabilities; t is t' already). When m grows they are rebased as rows.rebase does: by their
    weight times the shift of the reference."""
    m_new, ref, s = online(m, s, z)
    shift = ref_of(m) - ref
    r = tl.where(mask, z - ref, 0.0)
    if SMOOTH and not SOFT:
        wr = wr + ws * shift + tl.sum(w * r, 0)
        ws += tl.sum(w, 0)
    if SOFT:
        tr = tr + ta * shift + tl.sum(w * t * r, 0)
        ta += tl.sum(w * t, 0)
    return m_new, s, wr, ws, ta, tr


@triton.jit
def _stats_loop(xb, pb, weight_ptr, head, L, C, sx_c, sp_c, cap, eps, zero, BLOCK: tl.constexpr,
                STAGES: tl.constexpr, ACC_F64: tl.constexpr, HAS_CAP: tl.constexpr, SOFT: tl.constexpr,
                HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """Pass 1 over a long row's aligned body in pipelined blocks: (m, s, wr, ws, ta, tr) of
    `_stats_block`. Its loads are marked evict_last: pass 2 reads the row again right after."""
    m, s, wr, ws, ta, tr = zero + float("-inf"), zero, zero, zero, zero, zero
    cols = tl.arange(0, BLOCK)
    for start in tl.range(0, L, BLOCK, num_stages=STAGES):
        offs = start + cols
        mask = offs < L
        z, th, w, t = _block_inputs(xb, pb, weight_ptr, head + offs, offs, mask, sx_c, sp_c, cap, eps, C, zero,
                                    "evict_last", ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
        m, s, wr, ws, ta, tr = _stats_block(z, mask, w, t, m, s, wr, ws, ta, tr, SOFT, SMOOTH)
    return m, s, wr, ws, ta, tr


@triton.jit
def _hard_row(x_row, weight_ptr, t_idx, ignore_index, sx_c, m, log_s, lse, W, wr, eps, zl, cap, C,
              zero, ACC_F64: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
              HAS_CAP: tl.constexpr):
    """Step 3 of rows.py for a class-index row: (loss, a, (1-eps) w_t v, v). An out-of-range
    class reads nothing out of bounds and makes its row's loss and gradient nan (checked_index)."""
    valid = t_idx != ignore_index
    bad, safe = checked_index(t_idx, valid, C)
    z_t, th_t = capped(to_acc(tl.load(x_row + safe * sx_c), ACC_F64), cap, HAS_CAP)
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + safe) + zero
    else:
        w_t = zero + 1.0
    ce = (log_s - (z_t - ref_of(m))) * w_t
    if SMOOTH:
        ce = (1.0 - eps) * ce + (eps / C) * (W * log_s - wr)
    # z_loss: a runtime coefficient; lse is replaced by 0 where it is off (0 * inf would be nan)
    lse_z = tl.where(zl != 0.0, lse, 0.0)
    ce += zl * lse_z * lse_z
    ce = tl.where(bad, float("nan"), ce)
    v = tl.where(bad, float("nan"), tl.where(valid, 1.0, 0.0) + zero)
    coef_t = (1.0 - eps) * w_t * v
    a = coef_t
    if SMOOTH:
        a += (eps / C) * W * v
    a += 2.0 * zl * lse_z * v
    return tl.where(valid, ce, 0.0), a, coef_t, v


@triton.jit
def _row_loss(target_ptr, r, x_row, weight_ptr, ignore_index, sx_c, m, log_s, W, wr, ta, tr, eps, zl,
              cap, C, zero, ACC_F64: tl.constexpr, SOFT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
              SMOOTH: tl.constexpr, HAS_CAP: tl.constexpr):
    """Steps 2-3: the row's loss and its gradient's coefficients, (loss, a, coef_t, v, t_idx):
    g_c = k (a p_c - coef_t [c = t_idx] - ...) (see `_grad_block`), v the row's count."""
    lse = m + log_s
    if SOFT:  # (t' smoothed already)
        lse_z = tl.where(zl != 0.0, lse, 0.0)  # (z_loss off: no 0 * inf)
        loss = ta * log_s - tr + zl * lse_z * lse_z
        a = ta + 2.0 * zl * lse_z
        coef_t = zero
        v = zero + 1.0
        t_idx = tl.full([], -1, tl.int32)
    else:
        t_idx = tl.load(target_ptr + r)
        loss, a, coef_t, v = _hard_row(x_row, weight_ptr, t_idx, ignore_index, sx_c, m, log_s, lse, W, wr, eps,
                                       zl, cap, C, zero, ACC_F64, HAS_WEIGHT, SMOOTH, HAS_CAP)
    return loss, a, coef_t, v, t_idx


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
def _grad_pass(xb, gb, pb, x_row, g_row, p_row, weight_ptr, head, L, C, sx_c, sg_c, sp_c, m, log_s,
               a, coef_t, t_idx, v, k, eps, cap, zero, BLOCK: tl.constexpr, VEC: tl.constexpr,
               STAGES: tl.constexpr, SOFT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
               SMOOTH: tl.constexpr, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr):
    """The gradient of one row streamed from memory: the body in pipelined blocks, then the
    edges. Loads are the logits' last use (evict_first), and so are the stores."""
    cols = tl.arange(0, BLOCK)
    for start in tl.range(0, L, BLOCK, num_stages=STAGES):
        offs = start + cols
        mask = offs < L
        c = head + offs
        z, th, w, t = _block_inputs(xb, pb, weight_ptr, c, offs, mask, sx_c, sp_c, cap, eps, C, zero,
                                    "evict_first", ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
        g = _grad_block(z, th, w, t, c, m, log_s, a, coef_t, t_idx, v, k, eps, C, SOFT, SMOOTH, HAS_CAP)
        tl.store(gb + offs * sg_c, g, mask=mask, eviction_policy="evict_first")
    if VEC > 1:
        c, mask = _edges(head, L, C, VEC)
        z, th, w, t = _block_inputs(x_row, p_row, weight_ptr, c, c, mask, sx_c, sp_c, cap, eps, C,
                                    zero, "evict_first", ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
        g = _grad_block(z, th, w, t, c, m, log_s, a, coef_t, t_idx, v, k, eps, C, SOFT, SMOOTH, HAS_CAP)
        tl.store(g_row + c * sg_c, g, mask=mask)


@triton.jit
def ce_kernel(
    x_ptr, grad_ptr, target_ptr, probs_ptr, weight_ptr, wsum_ptr, scale_ptr, params_ptr, loss_ptr,
    stats_ptr, rows, C, D, sx_n, sx_c, sx_d, sg_n, sg_c, sg_d, sp_n, sp_c, sp_d, scale_stride,
    ignore_index,
    BLOCK: tl.constexpr, SINGLE: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
    SOFT: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, HAS_CAP: tl.constexpr,
    WRITE_GRAD: tl.constexpr, ACC_F64: tl.constexpr,
):
    """Loss (and gradient) of rows pid, pid + programs, ...; the module docstring has the math.
    Rows index (n, d) = (r // D, r % D); strides in elements (sx_*: logits, sg_*: gradient, sp_*:
    probs). SINGLE: the whole row is one block (C <= BLOCK), kept in registers for the gradient.
    params_ptr: (eps, zl, cap) in the compute dtype (`_options`).
    stats_ptr: (rows, 3) m, log s and A (probabilities; 0 for class indices), for ce_grad_kernel."""
    zero = acc_zero(ACC_F64)
    eps, zl, cap, W = _options(params_ptr, wsum_ptr, C, zero, HAS_WEIGHT)
    cols = tl.arange(0, BLOCK)
    for r in range(tl.program_id(0).to(tl.int64), rows, tl.num_programs(0)):
        x_row, g_row, p_row, xb, gb, pb, head, L = _row(r, x_ptr, grad_ptr, probs_ptr, C, D, sx_n, sx_c, sx_d,
                                                        sg_n, sg_c, sg_d, sp_n, sp_c, sp_d, VEC)
        # ---- pass 1 (step 1): max, sum of exps, the relative row sums; a one-block row stays in
        # registers (z1 ... t1), the edges' block too (ze ... te)
        if SINGLE:
            mask1 = cols < L
            c1 = head + cols
            z1, th1, w1, t1 = _block_inputs(xb, pb, weight_ptr, c1, cols, mask1, sx_c, sp_c, cap, eps, C, zero,
                                            "evict_first", ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
            m, s, wr, ws, ta, tr = _stats_block(z1, mask1, w1, t1, zero + float("-inf"), zero, zero, zero, zero,
                                                zero, SOFT, SMOOTH)
        else:
            m, s, wr, ws, ta, tr = _stats_loop(xb, pb, weight_ptr, head, L, C, sx_c, sp_c, cap, eps, zero, BLOCK,
                                               STAGES, ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
        if VEC > 1:
            ce, me = _edges(head, L, C, VEC)
            ze, the, we, te = _block_inputs(x_row, p_row, weight_ptr, ce, ce, me, sx_c, sp_c, cap, eps, C, zero,
                                            "evict_last", ACC_F64, HAS_CAP, SOFT, HAS_WEIGHT, SMOOTH)
            m, s, wr, ws, ta, tr = _stats_block(ze, me, we, te, m, s, wr, ws, ta, tr, SOFT, SMOOTH)
        log_s = tl.log(s)

        # ---- steps 2-3: the loss, and the gradient's row coefficients
        loss, a, coef_t, v, t_idx = _row_loss(target_ptr, r, x_row, weight_ptr, ignore_index, sx_c, m, log_s, W,
                                              wr, ta, tr, eps, zl, cap, C, zero, ACC_F64, SOFT, HAS_WEIGHT,
                                              SMOOTH, HAS_CAP)
        tl.store(loss_ptr + r, loss)
        tl.store(stats_ptr + 3 * r, m)
        tl.store(stats_ptr + 3 * r + 1, log_s)
        tl.store(stats_ptr + 3 * r + 2, ta)

        # ---- pass 2 (step 4): the gradient, k (a p_c - b_c) [* (1 - th_c^2) under a softcap]
        if WRITE_GRAD:
            k = tl.load(scale_ptr + r * scale_stride) + zero
            if SINGLE:
                g1 = _grad_block(z1, th1, w1, t1, c1, m, log_s, a, coef_t, t_idx, v, k, eps, C, SOFT, SMOOTH,
                                 HAS_CAP)
                tl.store(gb + cols * sg_c, g1, mask=mask1, eviction_policy="evict_first")
                if VEC > 1:
                    ge = _grad_block(ze, the, we, te, ce, m, log_s, a, coef_t, t_idx, v, k, eps, C, SOFT, SMOOTH,
                                     HAS_CAP)
                    tl.store(g_row + ce * sg_c, ge, mask=me)
            else:
                _grad_pass(xb, gb, pb, x_row, g_row, p_row, weight_ptr, head, L, C, sx_c, sg_c, sp_c, m, log_s, a,
                           coef_t, t_idx, v, k, eps, cap, zero, BLOCK, VEC, STAGES, SOFT, HAS_WEIGHT, SMOOTH,
                           HAS_CAP, ACC_F64)


@triton.jit
def ce_grad_kernel(
    x_ptr, grad_ptr, target_ptr, probs_ptr, weight_ptr, wsum_ptr, scale_ptr, params_ptr, stats_ptr,
    rows, C, D, sx_n, sx_c, sx_d, sg_n, sg_c, sg_d, sp_n, sp_c, sp_d, scale_stride, ignore_index,
    BLOCK: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr, SOFT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, HAS_CAP: tl.constexpr, ACC_F64: tl.constexpr,
):
    """Step 4 alone, one pass per row (read the logits, write the gradient), from ce_kernel's row
    statistics (m, log s, A) (see the module docstring). Arguments as ce_kernel's."""
    zero = acc_zero(ACC_F64)
    eps, zl, cap, W = _options(params_ptr, wsum_ptr, C, zero, HAS_WEIGHT)
    for r in range(tl.program_id(0).to(tl.int64), rows, tl.num_programs(0)):
        x_row, g_row, p_row, xb, gb, pb, head, L = _row(r, x_ptr, grad_ptr, probs_ptr, C, D, sx_n, sx_c, sx_d,
                                                        sg_n, sg_c, sg_d, sp_n, sp_c, sp_d, VEC)
        m = tl.load(stats_ptr + 3 * r) + zero
        log_s = tl.load(stats_ptr + 3 * r + 1) + zero
        A = tl.load(stats_ptr + 3 * r + 2) + zero
        # (the loss is not needed: wr and tr, which only it uses, are passed as 0)
        _, a, coef_t, v, t_idx = _row_loss(target_ptr, r, x_row, weight_ptr, ignore_index, sx_c, m, log_s, W, zero,
                                           A, zero, eps, zl, cap, C, zero, ACC_F64, SOFT, HAS_WEIGHT, SMOOTH,
                                           HAS_CAP)
        k = tl.load(scale_ptr + r * scale_stride) + zero
        _grad_pass(xb, gb, pb, x_row, g_row, p_row, weight_ptr, head, L, C, sx_c, sg_c, sp_c, m, log_s, a, coef_t,
                   t_idx, v, k, eps, cap, zero, BLOCK, VEC, STAGES, SOFT, HAS_WEIGHT, SMOOTH, HAS_CAP, ACC_F64)
