"""The Triton binary cross-entropy kernel (imported only when Triton is; `ops.bce_forward`
launches it): loss and gradient of each element in one pass, the formulas of `backends/rows.py`
(end), mirrored.

Passes: forward reads x and y and writes the gradient (eager: then scaled by grad_output / N in
backward, `kernels_scale`); the compiled path's backward recomputes the gradient with its scale
(SCALED) from x and y instead of keeping it. Every block but the last is unmasked, so its
accesses compile to 16-byte vectors whatever the element count (a mask `i < numel` with an
arbitrary numel would make every access scalar).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernels_rows import _log1p


@triton.jit
def _bce_block(x_ptr, y_ptr, w_ptr, pw_ptr, loss_ptr, grad_ptr, scale_ptr, i, numel, w_mod, pw_mod,
               scale_stride, LOGITS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
               PER_ELEMENT: tl.constexpr, WRITE_GRAD: tl.constexpr, SCALED: tl.constexpr,
               ACC_F64: tl.constexpr, MASKED: tl.constexpr):
    """One block of elements i: losses stored (PER_ELEMENT) or summed (returned), the gradient
    stored (WRITE_GRAD), times scale[i * scale_stride] (SCALED)."""
    mask = i < numel
    if MASKED:
        x = tl.load(x_ptr + i, mask=mask, other=0.5)
        y = tl.load(y_ptr + i, mask=mask, other=0.0)
    else:
        x = tl.load(x_ptr + i)
        y = tl.load(y_ptr + i)
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
        if MASKED:
            tl.store(loss_ptr + i, loss, mask=mask)
        else:
            tl.store(loss_ptr + i, loss)
    if WRITE_GRAD:
        if SCALED:
            g = g * (tl.load(scale_ptr + i * scale_stride, mask=mask, other=0.0) + tl.zeros_like(x))
        if MASKED:
            tl.store(grad_ptr + i, g, mask=mask)
        else:
            tl.store(grad_ptr + i, g)
    return tl.sum(tl.where(mask, loss, 0.0), 0)


@triton.jit
def bce_kernel(
    x_ptr, y_ptr, w_ptr, pw_ptr, loss_ptr, partial_ptr, grad_ptr, scale_ptr, numel, w_mod, pw_mod,
    scale_stride,
    BLOCK: tl.constexpr, LOGITS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr,
    PER_ELEMENT: tl.constexpr, WRITE_GRAD: tl.constexpr, SCALED: tl.constexpr, ACC_F64: tl.constexpr,
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
    pid = tl.program_id(0).to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    if (pid + 1) * BLOCK <= numel:
        total = _bce_block(x_ptr, y_ptr, w_ptr, pw_ptr, loss_ptr, grad_ptr, scale_ptr, i, numel, w_mod,
                           pw_mod, scale_stride, LOGITS, HAS_W, HAS_PW, PER_ELEMENT, WRITE_GRAD, SCALED,
                           ACC_F64, False)
    else:
        total = _bce_block(x_ptr, y_ptr, w_ptr, pw_ptr, loss_ptr, grad_ptr, scale_ptr, i, numel, w_mod,
                           pw_mod, scale_stride, LOGITS, HAS_W, HAS_PW, PER_ELEMENT, WRITE_GRAD, SCALED,
                           ACC_F64, True)
    if not PER_ELEMENT:
        tl.store(partial_ptr + pid, total)
