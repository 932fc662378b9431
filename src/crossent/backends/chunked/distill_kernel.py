"""The torch-op row kernels of distillation: loss and gradient of one chunk of the linear loss's
logits, the steps of `backends/divergence.py` (which has the math) in place.

dense   the student's chunk Z_s and the teacher's Z_t (n, V), in the loop's layout, become the
        per-row losses and, over Z_s, d(sum_i scale_i l_i)/dZ_s. Work (`divergence.divergence_`):
        torch's log_softmax of each model's capped, tempered logits into the buffers p and q,
        the mixture's or the KL's terms in a third (x) and over Z_s, Z_t (scratch; float32
        copies for 16-bit logits), no temporaries of the chunk's size; the student's tanh under
        a softcap, p1 (the temperature-1 softmax) for a hard part at T != 1. Where nothing comes
        between a model's product and 1 / T, the loop multiplies 1 / T inside the product
        (`alphas`). About 12 passes over the chunk at T != 1 for the JSD (25 before: measured
        with torch.profiler, N=512, D=128, V=16000, the matmuls 17% of the step then).
top-k   Z_s and the teacher's (ids, log-probs) (n, k): the support's logits are gathered, the
        support is set to -inf and the rest's softmax statistics taken over what remains (so
        p_tail is a sum over the classes outside the support, exact however small); the
        gradient is the rest's exp times one factor per row, plus a scatter at the support.

Determinism: every row reduction is `rows.row_sum` (one thread per row, fixed order); the
scatters write one value per place (`divergence.support_index`) or add to zeros.
"""

from __future__ import annotations

import torch

from ..._options import DistillationOptions, LossOptions
from .. import divergence as dv
from .. import rows
from ..common import compute_dtype


def _cap(x, cap, acc, out, tanh_out):
    """rows.capped with the softcap ``cap`` (None: none): (z in acc, tanh or None)."""
    return rows.capped(x, LossOptions(softcap=cap), acc, out=out, tanh_out=tanh_out)


def _like(buf, z):
    """A flat buffer seen with z's shape and strides (z may be a transposed view)."""
    if buf is None:
        return None
    view = buf[: z.numel()]
    return view.view(z.t().shape).t() if not z.is_contiguous() else view.view(z.shape)


class Buffers:
    """The reused compute-dtype buffers of one call's chunks (``numel`` elements each)."""

    def __init__(self, numel, dtype, teacher_dtype, opts: DistillationOptions, device):
        acc = compute_dtype(dtype)
        new = lambda on=True: torch.empty(numel, dtype=acc, device=device) if on else None
        self.s = new(dtype != acc)
        self.th = new(opts.softcap is not None)
        dense, soft = not opts.topk, opts.soft_weight != 0.0
        self.u = new(dense and soft and teacher_dtype != acc)
        self.p = new(dense)
        self.q = new(dense and soft)
        self.x = new(dense and soft)
        self.h = new(dense and opts.hard_weight != 0.0 and opts.temperature != 1.0)

    def view(self, name, z):
        return _like(getattr(self, name), z)


def _work(z, buffers, name):
    """The compute-dtype tensor the kernel works in: z itself where its dtype allows (the chunk
    buffer is scratch: the loop needs only the gradient written over it), else a buffer."""
    return z if z.dtype == compute_dtype(z.dtype) and getattr(buffers, name) is None else buffers.view(name, z)


def _row_factor(scale, counted, acc):
    """(n, 1) factor of each row's gradient: scale, 0 where the row is not counted."""
    s = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale), dtype=acc)
    return torch.where(counted, s.to(acc), 0.0).unsqueeze(1)


def _finish(s, grad, factor, counted, th):
    """The gradient w.r.t. the chunk's logits: times the softcap's derivative and the row factor,
    rows not counted exactly 0 (where, not a product: their logits may be -inf), into grad."""
    if th is not None:  # s (1 - th^2) as s - s th^2: two passes where mul, neg, add, mul were four
        s.addcmul_(s, th.mul_(th), value=-1.0)
    s.mul_(factor)
    if s.device.type == "cpu":  # only the rows not counted (a host read costs nothing here)
        s.index_fill_(0, (~counted).nonzero().squeeze(1), 0.0)
    else:  # no host sync on an accelerator: a masked pass over the chunk
        s.masked_fill_(~counted.unsqueeze(1), 0.0)
    if s is not grad:
        grad.copy_(s)


def alphas(opts: DistillationOptions) -> tuple[float, float]:
    """(student, teacher): the 1 / T the loop multiplies into each model's chunk logits inside its
    product (`Chunk.logits`' alpha) where nothing comes between the product and the division: no
    softcap and, for the student, no hard part (its cross-entropy is at T = 1). Saves one pass
    over the chunk for each (of ~14 at T != 1)."""
    t_inv = 1.0 / opts.temperature
    student = t_inv if opts.softcap is None and (opts.topk or opts.hard_weight == 0.0) else 1.0
    teacher = t_inv if not opts.topk and opts.teacher_softcap is None else 1.0
    return student, teacher


def distill_chunk(zs, zt, target, counted, opts: DistillationOptions, *, grad=None, scale=1.0, buffers):
    """Dense distillation on one chunk: zs, zt (n, V) the student's and the teacher's logits
    (raw: before caps and temperature, but divided by T where `alphas` says), target (n,) int64 or None, counted (n,) bool.
    grad None (loss only) or zs itself. Returns the per-row losses (n,) in the compute dtype.

    Steps (the math: divergence.py): the hard part's log-softmax at temperature 1 into a buffer
    (the cross-entropy is its value at the target; its exp is p1, which at T = 1 is also the
    divergence's p), then the divergence on the tempered logits (`divergence_`), the hard part's
    p1 - onehot added to its gradient, and one multiply by every factor at once (soft_weight / T,
    the divergence's own, the row's scale)."""
    acc = compute_dtype(zs.dtype)
    t_inv, soft, hard = 1.0 / opts.temperature, opts.soft_weight != 0.0, opts.hard_weight != 0.0
    s = _work(zs, buffers, "s")
    s, th = _cap(zs, opts.softcap, acc, s, buffers.view("th", zs))  # z1 (n, V)
    loss = torch.zeros(zs.shape[0], dtype=acc, device=zs.device)
    safe_t = torch.where(counted, target, 0).unsqueeze(1) if hard else None
    p1 = None
    if hard:  # CE = -log p1[t]; p1 = softmax(z1), kept for the gradient
        p1 = buffers.view("p" if opts.temperature == 1.0 else "h", zs)
        dv.softmax_(s, p1, log=True)
        loss -= opts.hard_weight * p1.gather(1, safe_t).squeeze(1)
        if grad is not None or (soft and opts.temperature == 1.0):
            p1.exp_()
    a_s, a_t = alphas(opts)
    if opts.temperature != 1.0 and a_s == 1.0:
        s.mul_(t_inv)
    c = 1.0  # the factor of s's gradient that is still to be multiplied in
    if soft:
        u = _work(zt, buffers, "u")
        if opts.teacher_softcap is not None:  # cap tanh(zt / cap) / T: the cap's multiply carries 1 / T
            th_t = torch.div(zt, opts.teacher_softcap, out=u) if zt.dtype == acc else u.copy_(zt).div_(
                opts.teacher_softcap)
            u = th_t.tanh_().mul_(opts.teacher_softcap * t_inv)
        else:
            u, _ = _cap(zt, None, acc, u, None)
            if opts.temperature != 1.0 and a_t == 1.0:
                u.mul_(t_inv)
        d_row, c = dv.divergence_(s, u, buffers.view("p", zs), buffers.view("q", zs), buffers.view("x", zs),
                                  opts.beta, p_ready=p1 is not None and opts.temperature == 1.0)
        loss += opts.soft_weight * d_row
        c *= opts.soft_weight * t_inv
    loss = torch.where(counted, loss, 0.0)
    if grad is None:
        return loss
    if not soft:
        s.zero_()
    if hard:  # s += (hard_weight / c) (p1 - onehot): the last multiply by c makes it hard_weight's
        s.add_(p1, alpha=opts.hard_weight / c)
        s.scatter_add_(1, safe_t, torch.full_like(safe_t, -opts.hard_weight / c, dtype=acc))
    _finish(s, grad, _row_factor(scale, counted, acc) * c, counted, th)
    return loss


def topk_chunk(zs, ids, log_q, opts: DistillationOptions, *, grad=None, scale=1.0, buffers):
    """Top-k distillation on one chunk: zs (n, V) the student's raw logits (divided by T where
    `alphas` says), ids (n, k) int64,
    log_q (n, k) the teacher's log-probs. grad None or zs itself. Returns (n,) losses."""
    acc = compute_dtype(zs.dtype)
    t_inv = 1.0 / opts.temperature
    s = _work(zs, buffers, "s")
    s, th = _cap(zs, opts.softcap, acc, s, buffers.view("th", zs))
    if opts.temperature != 1.0 and alphas(opts)[0] == 1.0:
        s.mul_(t_inv)
    valid = ids != opts.ignore_index
    counted = valid.any(1)
    safe = dv.support_index(ids, valid)
    a_s = s.gather(1, safe)  # (n, k) the support's tempered logits
    log_q = log_q.to(acc)
    if opts.tail:
        s.scatter_(1, safe, dv.NEG_INF)  # the rest: every class outside the support
        ref = dv.reference_of(s.amax(1, keepdim=True))
        s_r = rows.row_sum(s.sub_(ref).exp_())  # (n,) >= 1 where the rest holds a finite logit
        loss, lp_s, _, lp_tail, q_tail = dv.topk_row_terms(a_s - ref, torch.log(s_r), log_q, valid, True)
        g_s = torch.exp(lp_s) - torch.exp(torch.where(valid, log_q, dv.NEG_INF))
        if grad is not None:  # outside: e_c (p_tail - q_tail) / s_r; at the support: p - q
            coef = torch.where(s_r > 0, (torch.exp(lp_tail) - q_tail) / s_r, 0.0)
            s.mul_(coef.unsqueeze(1))
    else:
        a_max = torch.where(valid, a_s, dv.NEG_INF).amax(1, keepdim=True)
        loss, lp_n, lq_n, _, _ = dv.topk_row_terms(a_s - dv.reference_of(a_max), None, log_q, valid, False)
        g_s = torch.exp(lp_n) - torch.exp(lq_n)
        if grad is not None:
            s.zero_()
    loss = torch.where(counted, loss, 0.0)
    if grad is None:
        return loss
    s.scatter_add_(1, safe, torch.where(valid, g_s, 0.0))
    _finish(s, grad, _row_factor(scale, counted, acc) * t_inv, counted, th)
    return loss


def bytes_per_logit(dtype, teacher_dtype, opts: DistillationOptions) -> int:
    """Bytes per element of a chunk beside the student's logits: the teacher's logits and the
    `Buffers` (`divergence_` makes no temporaries of the chunk's size; for the chunk-rows rule)."""
    acc = compute_dtype(dtype)
    a = torch.empty((), dtype=acc).element_size()
    probe = Buffers(0, dtype, teacher_dtype, opts, "meta")
    count = sum(getattr(probe, k) is not None for k in ("s", "th", "u", "p", "q", "x", "h"))
    dense_soft = not opts.topk and opts.soft_weight != 0.0
    extra = torch.empty((), dtype=teacher_dtype).element_size() if dense_soft else 0
    return count * a + extra
