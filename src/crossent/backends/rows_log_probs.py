"""The row math of per-token log-probabilities and entropy: steps on top of `rows.py` (its
statistics relative to the row max, its softcap, its fixed-order row sums), reused by every
backend and by crossent.distributed. (A module of its own only to keep rows.py under 400 lines.)

One row of logits x (the vocabulary of one token), target t, softcap c, temperature T::

    0. logits       z = c tanh(x / c) / T            (z = x / T without a softcap)
    1. statistics   m = max_j z_j,  r_j = z_j - m <= 0,  e_j = exp(r_j),  s = sum_j e_j
                    r_t (the target's r),  er = sum_j e_j r_j       (er: entropy only)
    2. outputs      log p_t = r_t - log s
                    H = -sum_j p_j log p_j = log s - er / s        (p_j = e_j / s)
    3. gradient of  sum_i g_i log p_{i,t_i} + h_i H_i  (g, h: the per-row upstream gradients,
                    0 on ignored rows) w.r.t. z_c:
                        g [c = t] - p_c (g + h (log p_c + H)),   log p_c = r_c - log s
                    (d log p_t/dz_c = [c = t] - p_c;  dH/dz_c = -p_c (z_c - sum_j p_j z_j)
                    = -p_c (log p_c + H)), times dz/dx = (1 - tanh(x / c)^2) / T.

Everything is relative to the row max, as in rows.py: a large common offset costs no precision
(log p_t = (z_t - m) - log s; H adds two non-negative terms, log s and -er/s, no cancellation).
0 log 0 = 0: a logit of -inf (a masked token) has e_j = 0 and r_j = -inf, whose product is nan;
r is floored at LOG_FLOOR first, where exp is 0 in float32 and float64 alike, so such a token
contributes exactly 0 to H and to the gradient (torch.special.entr's convention; the composition
-(softmax * log_softmax).sum() gives nan there). Rows whose every logit is -inf, or holding nan or
+inf, give nan, as torch's log_softmax does. Ignored rows: both outputs are exactly 0 (``where``,
not a product) and the caller zeroes their g and h.

Blocks (a chunk of the vocabulary, a vocabulary shard) combine exactly: with the block's max m_b
and the row's M (shift d = m_b - M <= 0), s -> s e^d, er -> e^d (er + d s), r_t -> r_t + d
(`rebase_entropy`; rows.rebase does r_t).
"""

from __future__ import annotations

import torch

from .._options import LossOptions
from . import rows

# r = z - m is floored here before it multiplies its e = exp(r): exp(-1e4) is 0 in float32 and
# float64, so a -inf logit's e r is 0 * LOG_FLOOR = 0 (not 0 * -inf = nan), and every finite r
# whose e is not 0 (r > -746 in float64) is untouched.
LOG_FLOOR = -1e4


def tempered(x: torch.Tensor, opts: LossOptions, acc, *, out=None, tanh_out=None):
    """Step 0: (z, tanh(x / c) or None), z = capped(x) / T in the compute dtype, written into
    ``out`` when given (else fresh, or x itself when nothing changes it: never write into it)."""
    z, th = rows.capped(x, opts, acc, out=out, tanh_out=tanh_out)
    if opts.temperature == 1.0:
        return z, th
    if out is not None:
        return torch.div(z, opts.temperature, out=out), th
    return z / opts.temperature, th


def target_relative(r: torch.Tensor, tg: rows.Targets) -> torch.Tensor:
    """r_t (n,): the target's z - m (0 where the target is ignored or in another block)."""
    if r.shape[1] == 0:  # an empty vocabulary shard
        return r.new_zeros(r.shape[:1])
    r_t = r.gather(1, tg.local).squeeze(1)
    owned = tg.owned if tg.owned is not None else tg.valid
    return torch.where(owned, r_t, 0.0)


def entropy_sum(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """er = sum_j e_j max(r_j, LOG_FLOOR) per row, out of place (differentiable)."""
    return rows.row_sum(e * r.clamp_min(LOG_FLOOR))


def entropy_sum_(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """`entropy_sum`, overwriting r (a kernel's buffer)."""
    return rows.row_sum(r.clamp_min_(LOG_FLOOR).mul_(e))


def outputs(log_s, r_t, s, er, tg: rows.Targets):
    """Step 2: (log p_t, H or None) per row, 0 on ignored rows."""
    lp = torch.where(tg.valid, r_t - log_s, 0.0)
    if er is None:
        return lp, None
    return lp, torch.where(tg.valid, log_s - er / s, 0.0)


def rebase_entropy(s, er, shift):
    """A block's (s, er) relative to its max m_b, rebased to the row's M: shift = m_b - M <= 0
    (0 for a block with no finite logit, whose s and er are 0)."""
    scale = torch.exp(shift)
    return s * scale, (er + shift * s) * scale


def upstream(grad, tg: rows.Targets, acc):
    """A per-row upstream gradient (n,) in the compute dtype, 0 on ignored rows; None stays."""
    if grad is None:
        return None
    return torch.where(tg.valid, grad.to(acc), 0.0)


def gradient_(logp: torch.Tensor, g, h, entropy, tg: rows.Targets, opts: LossOptions, *,
              th=None, p_out=None) -> torch.Tensor:
    """Step 3 in place: ``logp`` (n, V) holds log p_c = r_c - log s of the row's global
    statistics and becomes d(sum_i g_i log p_t + h_i H_i)/dx of this block's logits x. g, h:
    per row (n,), 0 on ignored rows (`upstream`), either may be None (not differentiated);
    ``entropy`` (n,) the rows' H (with h); ``p_out`` a buffer like logp for p (with h; else
    fresh); ``th`` tanh(x / c) under a softcap (overwritten)."""
    if h is None:
        e = logp.exp_().mul_(-g.unsqueeze(1))  # -g p
    else:
        p = torch.exp(logp, out=p_out) if p_out is not None else torch.exp(logp)
        q = logp.clamp_min_(LOG_FLOOR).add_(entropy.unsqueeze(1)).mul_(h.unsqueeze(1))  # h (log p + H)
        if g is not None:
            q.add_(g.unsqueeze(1))
        e = q.mul_(p).neg_()  # -p (g + h (log p + H))
    if g is not None and e.shape[1]:
        hit = g if tg.owned is None else torch.where(tg.owned, g, 0.0)
        e.scatter_add_(1, tg.local, hit.unsqueeze(1).to(e.dtype))  # + g [c = t]
    if th is not None:
        e.mul_(th.mul_(th).neg_().add_(1.0))
    if opts.temperature != 1.0:
        e.div_(opts.temperature)
    return e
