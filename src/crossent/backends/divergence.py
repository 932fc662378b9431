"""The row math of distillation, written once (the sibling of rows.py, whose helpers it uses):
the steps every backend follows for the divergences between a student's softmax and a
teacher's, dense (`crossent.linear_distillation_loss`) and top-k
(`crossent.linear_topk_distillation_loss`). `crossent.reference` has the formulas in float64.

Dense, one row: the student's capped logits z1 (temperature 1), z = z1 / T, the teacher's
u = cap_t(.) / T; lp = log p = z - lse(z), lq = log q = u - lse(u), each computed relative to its
row max (`log_probs_`: r = z - m, lp = r - log sum exp(r)). With c1 = log(1 - beta),
c2 = log(beta) and d = (lp + c1) - (lq + c2), log m = log((1 - beta) p + beta q)::

    beta = 0      D = sum q (lq - lp)                         dD/dz = p - q
    beta = 1      D = sum p (lp - lq)                         dD/dz = p (lp - lq) - p D
    else          kp = p (lp - log m) = -p (c1 + softplus(-d)),  kq = q (lq - log m) = -q (c2 + softplus(d))
                  D = beta sum kq + (1 - beta) sum kp,  K = sum kp
                                                              dD/dz = (1 - beta) (kp - p K)

(the JSD gradient: d/dp of D is (1 - beta) (log p - log m), then the softmax's Jacobian). The two
softplus forms of lp - log m and lq - log m stay finite where the other distribution is 0 (d =
+-inf); terms of weight 0 are 0, by where (0 log 0 = 0). The hard part is the student's
cross-entropy at temperature 1: CE = log s1 - (z1_t - m1), dCE/dz1 = p1 - onehot(t). The row's
loss l = soft_weight D + hard_weight CE and its gradient w.r.t. z1 is
(soft_weight / T) dD/dz + hard_weight (p1 - onehot), times 1 - th^2 under the student's softcap.

Top-k, one row: the support S (the ids that are not ignore_index) with teacher log-probs lq_j,
the student's tempered logits z. With a reference ref (the row max), R_S = log sum_{j in S}
exp(z_j - ref), R_r = log sum_{c not in S} exp(z_c - ref) (summed over the classes outside S,
never as 1 - sum_S p, which cancels when S holds nearly all the mass) and R = logaddexp(R_S, R_r)::

    tail    lp_j = z_j - ref - R,  lp_tail = R_r - R,  q_tail = max(0, -expm1(lse_S(lq)))
            l = sum_S q (lq - lp) + q_tail (log q_tail - lp_tail)
            dl/dz_j = p_j - q_j (j in S),   dl/dz_c = e_c (p_tail - q_tail) / s_r (c not in S),
            e_c = exp(z_c - ref_r), s_r = sum_{c not in S} e_c (p_c / p_tail = e_c / s_r)
    no tail lp'_j = z_j - ref - R_S,  lq'_j = lq_j - lse_S(lq)
            l = sum_S q' (lq' - lp'),  dl/dz_j = p'_j - q'_j (j in S), 0 elsewhere

Who uses what: backends/chunked/distill_kernel.py (the in-place steps on a chunk of rows),
backends/composite.py's distillation (`divergence`, `topk_row_terms` through autograd),
backends/triton/kernels_distill.py (mirrored), distributed/distillation.py (per shard).
"""

from __future__ import annotations

import math

import torch

from .rows import row_sum, softplus

NEG_INF = float("-inf")


def mixture_constants(beta: float) -> tuple[float, float]:
    """(c1, c2) = (log(1 - beta), log(beta)) for 0 < beta < 1."""
    return math.log1p(-beta), math.log(beta)


def reference_of(m: torch.Tensor) -> torch.Tensor:
    """The row max as a reference for relative sums: 0 where it is -inf (a row of -inf logits),
    so that z - ref stays -inf rather than nan."""
    return torch.where(m == NEG_INF, 0.0, m)


def log_probs(z: torch.Tensor) -> torch.Tensor:
    """lp = (z - m) - log sum exp(z - m) along dim 1, out of place and differentiable (the max is
    detached: its shift cancels)."""
    m = reference_of(z.detach().amax(1, keepdim=True))
    r = z - m
    return r - torch.log(row_sum(torch.exp(r))).unsqueeze(1)


def weighted_log_ratio(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """a (log a - log b), 0 where a = 0; differentiable: the logs are replaced where a = 0
    before they meet (autograd sees no inf - inf)."""
    keep = a > 0
    return torch.where(keep, a * (torch.where(keep, log_a, 0.0) - torch.where(keep, log_b, 0.0)), 0.0)


def divergence(lp: torch.Tensor, lq: torch.Tensor, beta: float) -> torch.Tensor:
    """D per row from the two log-probabilities (n, V), out of place and differentiable (the
    composite backend; the fused kernels use `divergence_`)."""
    if beta == 0.0:
        return row_sum(weighted_log_ratio(torch.exp(lq), lq, lp))
    if beta == 1.0:
        return row_sum(weighted_log_ratio(torch.exp(lp), lp, lq))
    c1, c2 = mixture_constants(beta)
    p, q = torch.exp(lp), torch.exp(lq)
    keep_p, keep_q = p > 0, q > 0
    d = torch.where(keep_p | keep_q, (lp + c1) - (lq + c2), 0.0)
    kp = torch.where(keep_p, -p * (c1 + softplus(-d)), 0.0)
    kq = torch.where(keep_q, -q * (c2 + softplus(d)), 0.0)
    return beta * row_sum(kq) + (1.0 - beta) * row_sum(kp)


def log_probs_(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """In place: z (n, V) becomes lp = (z - m) - log s and the buffer e (like z) becomes p.
    Returns the row max m (n,)."""
    m = z.amax(1, keepdim=True)
    z.sub_(reference_of(m))
    torch.exp(z, out=e)
    s = row_sum(e).unsqueeze(1)
    z.sub_(torch.log(s))
    e.div_(s)
    return m.squeeze(1)


def divergence_(lp: torch.Tensor, lq: torch.Tensor, p: torch.Tensor, q: torch.Tensor, beta: float,
                scratch: torch.Tensor) -> torch.Tensor:
    """In place, the fused kernels' step: D per row (n,); lp (n, V) is overwritten with dD/dz (the
    gradient w.r.t. the tempered student logits); lq, p, q are read, ``scratch`` (like lp) is
    used. For 0 < beta < 1 one more temporary of the chunk's size is made (softplus)."""
    x = scratch
    if beta == 0.0:
        torch.sub(lq, lp, out=x).mul_(q).masked_fill_(q == 0, 0.0)  # q (lq - lp)
        d_row = row_sum(x)
        torch.sub(p, q, out=lp)
        return d_row
    if beta == 1.0:
        torch.sub(lp, lq, out=x).mul_(p).masked_fill_(p == 0, 0.0)  # p (lp - lq)
        d_row = row_sum(x)
        torch.mul(p, -d_row.unsqueeze(1), out=lp).add_(x)  # p (lp - lq) - p D
        return d_row
    c1, c2 = mixture_constants(beta)
    keep_p, keep_q = p > 0, q > 0
    torch.sub(lp, lq, out=x).add_(c1 - c2).masked_fill_(~(keep_p | keep_q), 0.0)  # d
    y = softplus(x)  # softplus(d)
    x.neg_()
    kp = softplus(x).add_(c1).mul_(p).neg_().masked_fill_(~keep_p, 0.0)  # -p (c1 + softplus(-d))
    torch.add(y, c2, out=x).mul_(q).neg_().masked_fill_(~keep_q, 0.0)  # kq
    k_row = row_sum(kp)
    d_row = beta * row_sum(x) + (1.0 - beta) * k_row
    torch.mul(p, -k_row.unsqueeze(1), out=lp).add_(kp).mul_(1.0 - beta)  # (1 - beta) (kp - p K)
    return d_row


# ---------------------------------------------------------------------- top-k


def log_sum_exp_masked(a: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log sum_j exp(a_j) over the valid entries of each row of a small (n, k) tensor, as
    a_top + log1p(sum_{j != top} exp(a_j - a_top)) (exact near 0: a teacher's top-k mass close
    to 1, where log(sum) would round); -inf for a row with none. Differentiable."""
    a = torch.where(valid, a, NEG_INF)
    top = a.detach().argmax(1, keepdim=True)
    a_top = a.gather(1, top)  # (n, 1)
    none = a_top == NEG_INF
    ref = torch.where(none, 0.0, a_top)
    rest = row_sum(torch.exp(a - ref).scatter(1, top, 0.0))
    return torch.where(none.squeeze(1), NEG_INF, ref.squeeze(1) + torch.log1p(rest))


def teacher_tail(lq: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_tail, log q_tail) per row: 1 - sum_S q = -expm1(lse_S(lq)), clamped at 0 (a teacher's
    mass that sums to 1 up to rounding)."""
    lse = log_sum_exp_masked(lq, valid)
    q_tail = torch.clamp(-torch.expm1(torch.clamp(lse, max=0.0)), min=0.0)
    return q_tail, torch.log(q_tail)


def topk_row_terms(a_s: torch.Tensor, rest_lse: torch.Tensor | None, lq: torch.Tensor,
                   valid: torch.Tensor, tail: bool):
    """The top-k loss of each row and the log-probs its gradient needs.

    a_s (n, k) the support's tempered student logits relative to a per-row reference; rest_lse
    (n,) log sum over the classes outside the support of exp(z - reference) (-inf: none;
    tail=True only); lq (n, k) the teacher's log-probs; valid (n, k) the entries in the support.
    Returns (loss (n,), lp_s (n, k), lq_s (n, k), lp_tail or None, q_tail or None): for tail=False
    lp_s, lq_s are the renormalised ones. Differentiable in a_s and rest_lse."""
    lq = torch.where(valid, lq, NEG_INF)
    a_s = torch.where(valid, a_s, NEG_INF)
    lse_s = log_sum_exp_masked(a_s, valid)
    q = torch.exp(lq)
    if not tail:
        lq_n = lq - log_sum_exp_masked(lq, valid).unsqueeze(1)
        lp_n = a_s - torch.where(lse_s == NEG_INF, 0.0, lse_s).unsqueeze(1)
        loss = row_sum(weighted_log_ratio(torch.exp(lq_n), lq_n, lp_n))
        return loss, lp_n, lq_n, None, None
    lse = torch.logaddexp(lse_s, rest_lse)  # R (both -inf only for an empty vocabulary)
    lp_s = a_s - torch.where(lse == NEG_INF, 0.0, lse).unsqueeze(1)
    lp_tail = rest_lse - lse
    q_tail, log_q_tail = teacher_tail(lq, valid)
    loss = row_sum(weighted_log_ratio(q, lq, lp_s)) + weighted_log_ratio(q_tail, log_q_tail, lp_tail)
    return loss, lp_s, lq, lp_tail, q_tail


def support_index(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """ids with each ignored entry replaced by the row's first valid id (0 in a row with none):
    a scatter of one value to all of a row's support then writes each place with one value only
    (ignore_index itself may be out of range, and pointing ignored entries at a fixed class would
    clash with that class's own entry)."""
    first = ids.gather(1, valid.to(torch.uint8).argmax(1, keepdim=True))
    return torch.where(valid, ids, torch.where(valid.any(1, keepdim=True), first, 0))
