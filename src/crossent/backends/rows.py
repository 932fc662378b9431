"""The row math of crossent's losses, written once: every implementation follows these steps.

One row i of logits x_i (the classes of one sample; z = x, or s tanh(x / s) under a softcap s),
class weights w (1 without), W = sum_c w_c, label smoothing eps, z_loss zl, C classes, v_i = 0 for
an ignored class-index target (else 1), t'_ic = (1-eps) t_ic + eps/C for probability targets::

    1. statistics   m = max_c z_c,  s = sum_c exp(z_c - m)             (the softmax's)
                    and, relative to m (r_c = z_c - m <= 0):
                    hard: r_t = z_{t_i} - m,  wr = sum_c w_c r_c (eps > 0 only)
                    soft: A = sum_c w_c t'_c,  Br = sum_c w_c t'_c r_c
    2. combine      lse = m + log s
    3. loss         hard  l = v ((1-eps) w_t (log s - r_t) + eps/C (W log s - wr)) + v zl lse^2
                    soft  l = A log s - Br + zl lse^2
    4. gradient     dl/dz_c = a p_c - b_c,  p_c = exp(z_c - lse)
                    hard  a = v ((1-eps) w_t + eps/C W + 2 zl lse),  b_c = v ((1-eps) w_t [c = t] + eps/C w_c)
                    soft  a = A + 2 zl lse,                          b_c = w_c t'_c
                    dz/dx = 1 - (z / s)^2 under a softcap

(That is lse - z_t = log s - (z_t - m) computed from quantities relative to the row max: with a
large common offset -- logits near 1e4 in float32 -- m + log s rounds to the offset's ulp (1e-3)
before z_t is subtracted; torch's log_softmax, (z - m) - log s, does not, and neither does this.)
Every statistic but m is a sum over classes, so a row cut into blocks (the Triton kernel's loop,
a chunk of the linear loss) or into vocabulary shards (crossent.distributed) combines exactly:
M = max_b m_b, S = sum_b s_b exp(m_b - M), and each relative sum is rebased to M by adding its
weight times (m_b - M) (`rebase`: r_t by [t in block], wr by the block's sum of w, Br by A), then
the blocks add (r_t: only the block that holds the target contributes). Who uses what:

    backends/chunked/kernel.py   steps 1-4 on a chunk of rows, in place in the gradient buffer
    backends/triton/kernels.py   the same steps in Triton (mirrored line for line: Triton cannot
                                 call these torch functions; tests/backends/test_rows.py checks
                                 that both agree on extreme inputs)
    backends/composite.py        steps 1-3 through autograd (torch.func, torch.compile, second
                                 derivatives differentiate them)
    distributed/_stats.py        step 1 per shard, the combine as two all-reduces, steps 3-4

Numerics that live here and nowhere else: the smoothing term exists only when eps > 0 (at eps = 0 a
-inf logit would give 0 * -inf = nan, where torch's loss is finite); probability targets are
smoothed as t' itself, not as the sum of its parts (a -inf logit with t = 0 and eps > 0 is then
torch's inf, not nan); ignored rows are masked with ``where``, not multiplied, so their loss and
gradient are exactly 0 even when 'mean' divides by a zero count.

Shapes: the class dim is 1; z is (n, V) or (n, V, D) for K-dimensional inputs, per-row values are
(n,) or (n, D). The binary losses' formulas are at the end (`bce_with_logits`, `bce`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as _torch_F

from .._options import LossOptions
from .common import SERIAL_REDUCTION, deterministic_sum

# ---------------------------------------------------------------------- the targets of a block


@dataclass
class Targets:
    """What the steps need of the targets of a block of rows, in the compute dtype.

    Class indices: ``index`` (n[, D]) global int64 indices; ``valid`` (n[, D]) not ignored;
    ``local`` (n, 1[, D]) the target's column in this block of classes (0 where it is elsewhere or
    ignored, so a gather stays in range); ``owned`` (n[, D]) whether this block holds it (None: the
    block holds every class, so owned == valid); ``w_t`` (n[, D]) w[t], 0 where ignored (None
    without class weights); ``z_t`` the target's (capped) logit when precomputed for all rows.
    Probabilities: ``probs`` (n, V[, D]) this block's.
    Both: ``weight`` (V,) this block's class weights or None; ``W`` the sum of all C class weights
    (C without); ``num_classes`` C; ``span`` (start, stop) of the block's classes (None: all).
    """

    num_classes: int
    W: float | torch.Tensor
    span: tuple[int, int] | None = None
    weight: torch.Tensor | None = None
    index: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    local: torch.Tensor | None = None
    owned: torch.Tensor | None = None
    w_t: torch.Tensor | None = None
    z_t: torch.Tensor | None = None

    def rows(self, rows: slice, cols: slice | None = None) -> Targets:
        """The targets of rows ``rows`` (and, for (n, V, D) blocks, positions ``cols`` of D)."""
        per_row = (rows,) if cols is None else (rows, cols)
        cut = lambda t, idx: t[idx] if t is not None else None
        return replace(
            self, index=cut(self.index, per_row), valid=cut(self.valid, per_row),
            owned=cut(self.owned, per_row), w_t=cut(self.w_t, per_row), z_t=cut(self.z_t, per_row),
            local=cut(self.local, (rows,) if cols is None else (rows, slice(None), cols)),
            probs=cut(self.probs, (rows,) if cols is None else (rows, slice(None), cols)),
        )


def targets(index, probs, weight, opts: LossOptions, acc, *, num_classes: int,
            classes: tuple[int, int] | None = None) -> Targets:
    """The Targets of all rows at once (one gather, not one per chunk). index (n[, D]) int64 or
    probs (n, V[, D]); weight (C,) the full class weight or None; ``classes`` = (start, stop): the
    block of classes the logits hold (a vocabulary shard; None: all)."""
    start, stop = classes if classes is not None else (0, num_classes)
    full_w = weight.to(acc) if weight is not None else None
    block_w = full_w[start:stop] if full_w is not None and classes is not None else full_w
    W = deterministic_sum(full_w) if full_w is not None else float(num_classes)
    tg = Targets(num_classes=num_classes, W=W, span=classes, weight=block_w, index=index, probs=probs)
    if index is None:
        return tg
    valid = index != opts.ignore_index
    safe = torch.where(valid, index, 0)
    tg.valid = valid
    tg.w_t = torch.where(valid, full_w[safe], 0.0) if full_w is not None else None
    if classes is None:
        tg.local = safe.unsqueeze(1)
    else:
        tg.owned = valid & (index >= start) & (index < stop)
        tg.local = torch.where(tg.owned, index - start, 0).unsqueeze(1)
    return tg


# ---------------------------------------------------------------------- the steps


def capped(x: torch.Tensor, opts: LossOptions, acc, *, out=None, tanh_out=None):
    """(z, tanh(x / s) or None): the logits in the compute dtype, softcapped, written into ``out``
    (a buffer shaped like x) when given, else fresh (or x itself, when nothing changes it).
    16-bit inputs are widened before the division: dividing in the input's dtype first made
    bfloat16 gradients 4x less accurate."""
    cap = opts.softcap
    if cap is None:
        if x.dtype == acc:
            return x, None
        return (out.copy_(x) if out is not None else x.to(acc)), None
    if tanh_out is None:
        th = x.to(acc).div(cap).tanh_() if x.dtype != acc else torch.div(x, cap).tanh_()
    elif x.dtype != acc:
        th = tanh_out.copy_(x).div_(cap).tanh_()
    else:
        th = torch.div(x, cap, out=tanh_out).tanh_()
    return (torch.mul(th, cap, out=out) if out is not None else th * cap), th


def row_sum(e: torch.Tensor) -> torch.Tensor:
    """Sum over the class dim (1), each row by one thread in a fixed order (thread-independent):
    a lone row longer than torch's grain size would be split across threads, so it is expanded to
    two rows (autograd differentiates this like a plain sum)."""
    if e.shape[1] > SERIAL_REDUCTION and e.numel() == e.shape[1]:
        return e.expand(2, *e.shape[1:]).sum(1)[:1]
    return e.sum(1)


def _col(v):
    """Per-row values (n[, D]) -> (n, 1[, D]), to broadcast along the class dim; numbers pass."""
    return v.unsqueeze(1) if isinstance(v, torch.Tensor) and v.dim() > 0 else v


def _class_vec(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(V,) -> broadcastable along dim 1 of like (n, V[, D])."""
    return w.view(1, -1, *([1] * (like.dim() - 2)))


def smoothed(t: torch.Tensor, opts: LossOptions, num_classes: int) -> torch.Tensor:
    """t' = (1-eps) t + eps/C (t itself without smoothing)."""
    eps = opts.label_smoothing
    return t * (1.0 - eps) + eps / num_classes if eps > 0.0 else t


def class_sums(r: torch.Tensor, m: torch.Tensor, tg: Targets, opts: LossOptions) -> list[torch.Tensor]:
    """Step 1 but the softmax's: the per-row sums over this block's classes that the loss needs,
    relative to the block's reference m (n, 1[, D]): r = z - m. hard: [r_t (0 where the target is
    elsewhere), wr (eps > 0 only)]; soft: [A, Br]. Out of place."""
    if tg.probs is not None:
        t = smoothed(tg.probs.to(r.dtype), opts, tg.num_classes)
        wt = t * _class_vec(tg.weight, t) if tg.weight is not None else t  # w_c t'_c
        return [row_sum(wt), row_sum(wt * r)]
    if tg.z_t is not None:  # (precomputed absolute target logits)
        r_t = tg.z_t - m.squeeze(1)
    elif r.shape[1] == 0:  # an empty vocabulary shard
        r_t = r.new_zeros(r.shape[:1] + r.shape[2:])
    else:
        r_t = r.gather(1, tg.local).squeeze(1)
    if tg.owned is not None:
        r_t = torch.where(tg.owned, r_t, 0.0)
    sums = [r_t]
    if opts.label_smoothing > 0.0:
        sums.append(row_sum(r * _class_vec(tg.weight, r)) if tg.weight is not None else row_sum(r))
    return sums


def block_weight(tg: Targets) -> float | torch.Tensor:
    """sum_c w_c over this block's classes (its class count without weights)."""
    if tg.weight is not None:
        return deterministic_sum(tg.weight)
    start, stop = tg.span if tg.span is not None else (0, tg.num_classes)
    return float(stop - start)


def rebase(sums: list, shift: torch.Tensor, tg: Targets, opts: LossOptions, block_w=None) -> list:
    """The relative sums of a block with reference m_b, rebased to the row's reference M:
    shift = m_b - M (<= 0; 0 for a block with no finite logit). r_t += [t in block] shift,
    wr += (sum of w over the block) shift, Br += A shift. ``block_w``: `block_weight` (hard
    targets with smoothing)."""
    if tg.probs is not None:
        return [sums[0], sums[1] + sums[0] * shift]
    owned = tg.owned if tg.owned is not None else tg.valid
    out = [sums[0] + torch.where(owned, shift, 0.0)]
    if opts.label_smoothing > 0.0:
        out.append(sums[1] + block_w * shift)
    return out


def row_loss(m: torch.Tensor, log_s: torch.Tensor, sums, tg: Targets, opts: LossOptions):
    """Steps 2-3 (and 4's row factor): (per-row losses l, the gradient's a, lse), from the row
    max m, log s and the (combined) relative class sums."""
    eps, zl, C = opts.label_smoothing, opts.z_loss, tg.num_classes
    lse = m + log_s
    if tg.probs is not None:
        A, Br = sums[0], sums[1]
        loss, a = A * log_s - Br, A
        if zl:
            loss, a = loss + zl * lse * lse, a + 2.0 * zl * lse
        return loss, a, lse
    ce = log_s - sums[0]
    w_t = tg.w_t
    if w_t is not None:
        ce = ce * w_t
        a = (1.0 - eps) * w_t
    else:
        a = torch.full_like(lse, 1.0 - eps)
    if eps > 0.0:
        ce = (1.0 - eps) * ce + (eps / C) * (tg.W * log_s - sums[1])
        a = a + (eps / C) * tg.W
    if zl:
        ce, a = ce + zl * lse * lse, a + 2.0 * zl * lse
    # where, not a product: an ignored row's loss and gradient are exactly 0
    return torch.where(tg.valid, ce, 0.0), torch.where(tg.valid, a, 0.0), lse


def gradient_(e: torch.Tensor, coef, scale, tg: Targets, opts: LossOptions, th=None) -> torch.Tensor:
    """Step 4, in place: e holds exp(z - r) for a per-row reference r; with coef = a * scale /
    sum_c exp(z_c - r) (so that e * coef = a p scale) it becomes scale * (a p - b) [* (1 - th^2)
    under a softcap], the gradient of sum_i scale_i l_i w.r.t. the block's logits. scale: a
    number, a 0-d tensor or per row (n[, D])."""
    e.mul_(_col(coef))
    eps, C = opts.label_smoothing, tg.num_classes
    if tg.probs is not None:  # b_c = w_c t'_c
        t = smoothed(tg.probs.to(e.dtype), opts, C)
        wt = t * _class_vec(tg.weight, t) if tg.weight is not None else t
        if isinstance(scale, torch.Tensor):
            e.addcmul_(wt, _col(scale), value=-1.0)
        else:
            e.sub_(wt, alpha=scale)
    else:
        sv = tg.valid.to(e.dtype) * scale  # scale_i, 0 for ignored rows
        if e.shape[1]:
            hit = (1.0 - eps) * sv
            if tg.w_t is not None:
                hit = hit * tg.w_t
            if tg.owned is not None:
                hit = torch.where(tg.owned, hit, 0.0)
            e.scatter_add_(1, tg.local, -hit.unsqueeze(1))
        if eps > 0.0:  # the uniform part of the smoothed target: - eps/C w_c scale_i
            u = _col(sv) * (eps / C)
            e.sub_(u * _class_vec(tg.weight, e) if tg.weight is not None else u)
    if th is not None:
        e.mul_(th.mul_(th).neg_().add_(1.0))
    return e


def relative_(z: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """r = z - m into ``out`` (which may be z itself), m (n, 1[, D])."""
    return z.sub_(m) if out is z else torch.sub(z, m, out=out)


# ---------------------------------------------------------------------- the binary losses
#
#     on logits          l = w (pw y softplus(-x) + (1-y) softplus(x)),  k = 1 + (pw - 1) y
#                        dl/dx = w (k sigmoid(x) - pw y),   dl/dy = w (pw softplus(-x) - softplus(x))
#     on probabilities   l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))
#                        dl/dp = w (p - y) / max(p (1-p), 1e-12),   dl/dy = -w (max(log p, -100) - max(log(1-p), -100))
#
# The form on logits is a sum of two non-negative terms: torch's (1-y) x + k softplus(-x) cancels
# where x is very negative and y = 0 (x = -20: -20 + 20.000000002 rounds to 0 in float32; the true
# loss is 2.1e-9). At x = -inf torch's formula gives -inf + inf = nan for every y and this one +inf
# for y > 0: torch's nan is returned. The -100 floor and the 1e-12 clamp are torch's
# (aten/src/ATen/native/Loss.cpp).

# torch's EPSILON in binary_cross_entropy_backward is the float literal 1e-12f, i.e. this value.
BCE_EPS = 9.999999960041972e-13


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) without overflow or cancellation for any x: -log sigmoid(-x), one stable op."""
    return _torch_F.logsigmoid(-x).neg_()


def bce_with_logits(x, y, pos_weight=None):
    """Per-element loss on logits (before the weight), torch's nan at x = -inf."""
    # y sp(-x) + (1-y) sp(x) as two non-negative terms: sp(x) + y (sp(-x) - sp(x)) would cancel
    # at x = 20, y = 1 (true loss 2.1e-9, computed 0). With sp(-x) = -log sigmoid(x) and sp(x) =
    # -log sigmoid(-x), one op each (`softplus` of either sign took two negations more: 12 passes
    # over a chunk against 9).
    ls_pos, ls_neg = _torch_F.logsigmoid(x), _torch_F.logsigmoid(-x)
    loss = torch.addcmul((1.0 - y) * ls_neg, y if pos_weight is None else pos_weight * y, ls_pos).neg_()
    neg_inf = x == float("-inf")
    if torch.is_grad_enabled() and loss.requires_grad:  # added, not filled: the gradient stays -pw y
        return loss + torch.where(neg_inf, float("nan"), 0.0)
    return loss.masked_fill_(neg_inf, float("nan"))


def bce_with_logits_input_grad(x, y, pos_weight=None, *, out=None):
    """dl/dx per element, before the weight: sigmoid(x) - y, or sigmoid(x) (1 + (pw - 1) y) - pw y
    (into ``out`` where given: two passes and no temporary without pos_weight)."""
    sig = torch.sigmoid(x, out=out)
    if pos_weight is None:
        return sig.sub_(y)
    return sig.mul_(1.0 + (pos_weight - 1.0) * y).sub_(pos_weight * y)


def bce(p, y):
    """(per-element loss on probabilities before the weight, its two floored logs)."""
    logp = torch.log(p).clamp_min(-100.0)
    log1mp = torch.log1p(-p).clamp_min(-100.0)
    return (y * logp + (1.0 - y) * log1mp).neg_(), logp, log1mp


def bce_grads(p, y):
    """(dl/dp, dl/dy) per element, before the weight: torch's backward formulas, not the
    derivative of the floored loss -- the input's gradient clamps its denominator at 1e-12 (at
    p = 0 or 1 it is large, where the floored loss's derivative is 0), the target's is
    log(1 - p) - log p unfloored (+-inf at p = 0 or 1), as torch's binary_cross_entropy_backward
    and its target backward compute them."""
    return bce_input_grad(p, y), torch.log1p(-p) - torch.log(p)


def bce_input_grad(p, y):
    """dl/dp of `bce_grads` alone."""
    return (p - y) / (p * (1.0 - p)).clamp_min(BCE_EPS)


class BCEOnProbabilities(torch.autograd.Function):
    """The per-element loss on probabilities with torch's gradients (`bce_grads`), for the paths
    that differentiate through autograd (composite: torch.func, torch.compile, second
    derivatives): the backward is written in differentiable ops, so it can be differentiated
    again; vmap's rule is generated."""

    generate_vmap_rule = True

    @staticmethod
    def forward(p, y):
        return bce(p, y)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        p, y = ctx.saved_tensors
        gp, gy = bce_grads(p, y)
        return grad * gp, grad * gy if ctx.needs_input_grad[1] else None
