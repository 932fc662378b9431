"""The steps of vocab_parallel_linear_distillation_loss (distillation.py): the dense distillation loss
(`crossent.linear_distillation_loss`) of a student and a teacher whose output layers are split by
vocabulary rows over a group (rank r holds the rows [start, stop) of both (V, D) and (V, D_t) weights:
the same shard for both).

Contract (x (N, D), x_t (N, D_t) the same on every rank; W_r, W_t,r, b_r, b_t,r this rank's rows)::

    loss == crossent.linear_distillation_loss(x, cat_r(W_r), x_t, cat_r(W_t,r), linear_bias=cat_r(b_r), ...)

in value (on every rank) and in the gradients w.r.t. x (the full one, after the all-reduce), W_r and
b_r; the teacher is a constant (never differentiated).

Why two small all-reduces carry the softmaxes over (per row; z1 the student's capped logits, z = z1 / T,
u the teacher's capped logits / T; shard r holds the classes c in r): every term of the loss is a sum over
classes of a function of p_c = exp(z_c - lse(z)) and q_c = exp(u_c - lse(u)) alone, once both global
log-sum-exps are known::

    lse(z) = M + log S,  M = max_r m_r,  S = sum_r exp(m_r - M) s_r,  m_r = max_{c in r} z_c,
             s_r = sum_{c in r} exp(z_c - m_r)                      (the same for u, and z1 if T != 1)
    beta = 0      D = sum_r sum_{c in r} q_c (lq_c - lp_c)
    beta = 1      D = sum_r sum_{c in r} p_c (lp_c - lq_c)
    0 < beta < 1  D = sum_r sum_{c in r} [beta kq_c + (1 - beta) kp_c],  m_c = (1 - beta) p_c + beta q_c,
                  kp_c = p_c log(p_c / m_c), kq_c = q_c log(q_c / m_c)
    hard          CE = log S1 - (z1_t - M1)            (z1_t: only the rank holding t adds it)

The mixture m_c is per class: it needs p_c and q_c, i.e. both global lse, and nothing else -- so
every beta in [0, 1] is exact after the two statistic all-reduces (MAX of [m(z), m(u), m(z1)], then
SUM of [s(z), s(u), s(z1), z1_t - M1], each rebased to the global max first, as `_stats.combine`).
The divergence's per-shard sums D_r then add over the ranks (one SUM of [D_r, K_r]: N numbers or 2N).

Gradient w.r.t. z on this rank's classes (`divergence.divergence_terms_` / `divergence_finish_`):
beta = 0: p - q (local); beta = 1: p (lp - lq) - p D; mixture: (1 - beta)(kp - p K), K = sum_c kp_c.
D and K are row totals over all classes: that third SUM is needed before any gradient, so the
collectives run per token chunk (n rows) and the gradient is finished in the same pass::

    per chunk   Z_s = x_c W_r^T (+ b_r), Z_t = x_t,c W_t,r^T (+ b_t,r)   [n, V_r] each   2 n (D + D_t) V_r
                all_reduce MAX [k, n]; all_reduce SUM [k + hard, n]; all_reduce SUM [1 or 2, n] (soft part)
                G = dl/dZ_s [n, V_r];  grad_x[c] = G W_r, grad_W_r += G^T x_c, grad_b_r += sum G   4 n D V_r
    backward    grad_x (N, D): one all_reduce SUM (each rank's G W_r is a partial sum over its classes)

with k = 1 (student) + 1 (teacher, soft_weight != 0) + 1 (z1, hard_weight != 0 and T != 1). Reduction
'none' (its grad_output known only in backward): forward keeps the global statistics (at most 7
numbers per token) and backward computes both models' chunk logits again, with no statistic
collective. Never an N x V_r tensor: one chunk of each model's logits and a few chunk-sized buffers.
The chunk size is the same on every rank (the collectives' shapes must agree): from the global
vocabulary's ceil(C / W), or ``chunk_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import distributed as _dchecks
from .._options import DistillationOptions, LossOptions
from ..backends import composite_distill, rows
from ..backends import divergence as dv
from ..backends.autograd import Handover
from ..backends.common import compute_dtype, deterministic_sum, safe_reciprocal
from . import _comm, _head_products, _layout

_FN = "vocab_parallel_linear_distillation_loss"
_NEG_INF = float("-inf")


def _softmax_partials(a: torch.Tensor):
    """(m (n,), s (n,)): this shard's row max and sum of exp(a - m) (m -inf, s 0 for a row with no
    finite logit here: an empty shard, or every local logit -inf)."""
    if a.shape[1] == 0:
        return a.new_full(a.shape[:1], _NEG_INF), a.new_zeros(a.shape[:1])
    m = a.amax(1)
    return m, rows.row_sum(torch.exp(a - dv.reference_of(m).unsqueeze(1)))


@dataclass(frozen=True)
class _Call:
    """One call: everything but its tensors. rows: tokens per chunk (the same on every rank)."""

    vocab: _layout.Vocab
    opts: DistillationOptions
    comm: _layout.Comm
    rows: int
    out_dtype: torch.dtype
    want: tuple
    handover: Handover = field(default_factory=Handover, compare=False)

    @property
    def soft(self) -> bool:
        return self.opts.soft_weight != 0.0

    @property
    def hard(self) -> bool:
        return self.opts.hard_weight != 0.0

    @property
    def own_z1(self) -> bool:
        """The hard part needs the temperature-1 softmax's statistics beside the tempered one's."""
        return self.hard and self.soft and self.opts.temperature != 1.0

    @property
    def mixture(self) -> bool:
        return 0.0 < self.opts.beta < 1.0

    def stat_rows(self) -> dict:
        """The saved statistics' rows: M, log S of the student's softmax (tempered with a soft part,
        else z1's); of the teacher's (soft); of z1 (own_z1); K (soft, beta > 0: D at beta = 1)."""
        names = ["mz", "lz"] + (["mu", "lu"] if self.soft else []) + (["m1", "l1"] if self.own_z1 else [])
        if self.soft and self.opts.beta > 0.0:
            names.append("k")
        return {n: i for i, n in enumerate(names)}

    def targets(self, target, acc) -> rows.Targets:
        opts = LossOptions(ignore_index=self.opts.ignore_index)
        return rows.targets(target, None, None, opts, acc, num_classes=self.vocab.num_classes,
                            classes=(self.vocab.start, self.vocab.stop))


def _combine(dists, hard_at, tg: rows.Targets, call: _Call):
    """The two statistic all-reduces over the chunk's distributions (list of (n, V_r)) -> (M (k, n),
    log S (k, n), r_t (n,) = z1_t - M1 or None); ``hard_at``: which of them is z1 (None: no hard part)."""
    parts = [_softmax_partials(a) for a in dists]
    m = torch.stack([p[0] for p in parts])  # (k, n)
    s = torch.stack([p[1] for p in parts])
    r_t = None
    if hard_at is not None:
        ref1 = dv.reference_of(m[hard_at]).unsqueeze(1)
        r_t = rows.class_sums(dists[hard_at] - ref1, ref1, tg, LossOptions())[0]
    m_all = _comm.all_reduce_max(m, call.comm.tp)
    shift = torch.where(m == _NEG_INF, 0.0, dv.reference_of(m) - m_all)  # (<= 0; 0 for no finite logit here)
    s = s * torch.exp(shift)
    if r_t is not None:
        r_t = rows.rebase([r_t], shift[hard_at], tg, LossOptions())[0]
        s = torch.cat([s, r_t.unsqueeze(0)])
    s = _comm.all_reduce_sum(s, call.comm.tp, call.comm.deterministic)
    k = m.shape[0]
    return m_all, torch.log(s[:k]), (s[k] if r_t is not None else None)


def _global_log_probs(a: torch.Tensor, m: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """(a - M) - log S over this shard's classes, in place (M, log S the global statistics): relative to
    the global max, as `_stats.chunk_grad` (lse's rounding at a large common offset is no term's)."""
    return a.sub_(m.unsqueeze(1)).sub_(log_s.unsqueeze(1))


def _statistics(call: _Call, z, u, z1, tg):
    """Forward: the chunk's global statistics (k', n) (the K row still empty) and r_t."""
    idx = call.stat_rows()
    dists = [z] + ([u] if call.soft else []) + ([z1] if call.own_z1 else [])
    hard_at = None if not call.hard else (len(dists) - 1 if call.own_z1 else 0)
    m_all, log_s, r_t = _combine(dists, hard_at, tg, call)
    stats = torch.empty(len(idx), z.shape[0], dtype=z.dtype, device=z.device)
    stats[idx["mz"]], stats[idx["lz"]] = m_all[0], log_s[0]
    if call.soft:
        stats[idx["mu"]], stats[idx["lu"]] = m_all[1], log_s[1]
    if call.own_z1:
        stats[idx["m1"]], stats[idx["l1"]] = m_all[-1], log_s[-1]
    return stats, r_t


def _soft_part(call: _Call, p, lp, u, stats, forward: bool):
    """The divergence on the chunk: (D per row, global (n,) or None in backward; K (n,) or None;
    g (n, V_r): the gradient's per-class part, `divergence_terms_`' s). lp, u are consumed."""
    opts, idx = call.opts, call.stat_rows()
    lq = _global_log_probs(u, stats[idx["mu"]], stats[idx["lu"]])
    g = torch.empty_like(lp)
    if call.mixture:
        d_part, k_part = dv.divergence_terms_(g, torch.empty_like(lp), p, lq.exp_(), lp, opts.beta)
    else:
        d_part, k_part = dv.divergence_terms_(g, None, p, lq, lp, opts.beta)
    if not forward:
        return None, (stats[idx["k"]] if opts.beta > 0.0 else None), g
    both = torch.stack([d_part, k_part]) if call.mixture else d_part.unsqueeze(0)
    both = _comm.all_reduce_sum(both, call.comm.tp, call.comm.deterministic)  # the rows' totals
    d_row = both[0]
    k_row = both[1] if call.mixture else (d_row if opts.beta == 1.0 else None)
    if k_row is not None:
        stats[idx["k"]] = k_row
    return d_row, k_row, g


def _chunk(call: _Call, zs, zt, tg: rows.Targets, counted, saved, scale):
    """One chunk: zs, zt (n, V_r) the raw logits (scratch). saved: None (forward: the collectives run)
    or the chunk's saved statistics (backward of 'none'). scale: None (no gradient) or the rows'
    factor (a number, 0-d or (n,)). Returns (losses (n,) or None, statistics (k', n), gradient
    (n, V_r) or None), in the compute dtype."""
    opts, acc, idx = call.opts, compute_dtype(zs.dtype), call.stat_rows()
    t_inv = 1.0 / opts.temperature
    z1, th = rows.capped(zs, LossOptions(softcap=opts.softcap), acc)
    z, u = z1, None
    if call.soft:  # (a hard part alone runs at temperature 1: z is z1)
        z = z1 * t_inv if opts.temperature != 1.0 else z1
        u = rows.capped(zt, LossOptions(softcap=opts.teacher_softcap), acc)[0]
        u = u * t_inv if opts.temperature != 1.0 else u
    forward = saved is None
    stats, r_t = _statistics(call, z, u, z1, tg) if forward else (saved, None)
    bad = (stats[idx["mz"]] == _NEG_INF) | torch.isnan(stats[idx["lz"]])  # torch's nan rows of a log-softmax
    lp = _global_log_probs(z, stats[idx["mz"]], stats[idx["lz"]])  # (z is z1 only where z1 is not needed)
    p = torch.exp(lp)
    d_row = k_row = g = None
    if call.soft:
        bad = bad | (stats[idx["mu"]] == _NEG_INF) | torch.isnan(stats[idx["lu"]])
        d_row, k_row, g = _soft_part(call, p, lp, u, stats, forward)
    losses = None
    if forward:
        loss = torch.zeros_like(stats[0])
        if call.soft:
            loss = opts.soft_weight * torch.where(bad, math.nan, d_row)
        if call.hard:  # CE = log S1 - (z1_t - M1)
            loss = loss + opts.hard_weight * (stats[idx["l1" if call.own_z1 else "lz"]] - r_t)
        losses = torch.where(counted, loss, 0.0)
    if scale is None:
        return losses, stats, None
    if g is None:
        g = torch.zeros_like(p)
    else:
        g.mul_(opts.soft_weight * t_inv * dv.divergence_finish_(g, p, k_row, opts.beta))
        g = torch.where(bad.unsqueeze(1), math.nan, g)
    if call.hard:  # + hard_weight (p1 - onehot(t))
        p1 = torch.exp(_global_log_probs(z1, stats[idx["m1"]], stats[idx["l1"]])) if call.own_z1 else p
        g.add_(p1, alpha=opts.hard_weight)
        if g.shape[1]:
            hit = tg.owned.to(acc) * -opts.hard_weight  # (where(owned, -h, 0) would round h to float32)
            g.scatter_add_(1, tg.local, hit.unsqueeze(1))
    if th is not None:
        g.mul_(1.0 - th * th)
    factor = scale.unsqueeze(1) if isinstance(scale, torch.Tensor) and scale.dim() else scale
    return losses, stats, torch.where(counted.unsqueeze(1), g * factor, 0.0)  # (where: such a row may be nan)


def _loop(call: _Call, heads, tg: rows.Targets, counted, *, saved=None, scale=None):
    """Every chunk: (losses (N,) or None, statistics (k', N) or None, (grad_x partial, grad_W_r,
    grad_b_r) in the compute dtype, None where not wanted)."""
    x, w, b, xt, wt, bt = heads
    n = x.shape[0]
    acc = compute_dtype(x.dtype)
    want_x, want_w, want_b = call.want if scale is not None else (False, False, False)
    gx, gw, gb = _head_products.zero_grads(x, w, (want_x, want_w, want_b and b is not None), acc)
    losses = torch.zeros(n, dtype=acc, device=x.device) if saved is None else None
    stats = torch.zeros(len(call.stat_rows()), n, dtype=acc, device=x.device) if saved is None else None
    if saved is not None and w.shape[0] == 0:  # an empty shard: no collective in backward, nothing to add
        return None, None, (gx, gw, gb)
    for i in range(0, n, call.rows):
        cut = slice(i, min(i + call.rows, n))
        zs = _head_products.logits(x[cut], w, b)
        zt = _head_products.logits(xt[cut], wt, bt) if call.soft else None
        sc = scale[cut] if isinstance(scale, torch.Tensor) and scale.dim() else scale
        loss_c, stats_c, g = _chunk(call, zs, zt, tg.rows(cut), counted[cut],
                                    None if saved is None else saved[:, cut], sc)
        if saved is None:
            losses[cut], stats[:, cut] = loss_c, stats_c
        if g is None:
            continue
        _head_products.add_chunk_grads(g, x, w, cut, (gx, gw, gb))
    return losses, stats, (gx, gw, gb)


class _DistillFn(torch.autograd.Function):
    """forward(call, input, W_r, b_r, teacher_input, W_t,r, b_t,r, target): 'mean'/'sum' finish the
    gradients in forward (scaled by grad_output in backward), 'none' keeps the statistics and
    recomputes in backward; backward all-reduces grad_x. create_graph=True raises."""

    @staticmethod
    def forward(call, input, w, b, xt, wt, bt, target):
        acc = compute_dtype(input.dtype)
        tg, counted = call.targets(target, acc), composite_distill.counted_rows(input.shape[0], target, call.opts,
                                                                                input.device)
        heads = (input, w, b, xt, wt, bt)
        if call.opts.reduction == "none":
            losses, stats, _ = _loop(call, heads, tg, counted)
            call.handover.put((stats, None))
            return losses.to(call.out_dtype)
        den = composite_distill.denominator(counted, call.opts, acc)
        scale = safe_reciprocal(den) if den is not None else 1.0
        losses, _, grads = _loop(call, heads, tg, counted, scale=scale)
        call.handover.put((None, grads))
        total = deterministic_sum(losses)
        return (total / den if den is not None else total).to(call.out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, w, b, xt, wt, bt, target = inputs
        stats, grads = call.handover.take()
        ctx.call, ctx.grads = call, grads
        ctx.dtypes = (input.dtype, w.dtype, None if b is None else b.dtype)
        if stats is not None:
            ctx.save_for_backward(input, w, b, xt, wt, bt, target, stats)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True
            _dchecks.no_second_derivative(_FN)
        call = ctx.call
        if ctx.grads is None:  # 'none': recompute with the saved statistics, grad_output per row
            input, w, b, xt, wt, bt, target, stats = ctx.saved_tensors
            acc = compute_dtype(input.dtype)
            tg = call.targets(target, acc)
            counted = composite_distill.counted_rows(input.shape[0], target, call.opts, input.device)
            _, _, grads = _loop(call, (input, w, b, xt, wt, bt), tg, counted, saved=stats, scale=grad_out.to(acc))
        else:
            g = grad_out.to(ctx.grads[0].dtype if ctx.grads[0] is not None else grad_out.dtype)
            grads = tuple(t * g if t is not None else None for t in ctx.grads)
            ctx.grads = None
        gx, gw, gb = grads
        if gx is not None:
            gx = _comm.all_reduce_sum(gx, call.comm.tp, call.comm.deterministic)
        x_dt, w_dt, b_dt = ctx.dtypes
        return (None, gx.to(x_dt) if gx is not None else None, gw.to(w_dt) if gw is not None else None,
                gb.to(b_dt) if gb is not None else None, None, None, None, None)
