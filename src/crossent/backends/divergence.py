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
+-inf); terms of weight 0 are 0, by where (0 log 0 = 0). The fused step (`divergence_`) takes the
same terms from the probabilities instead, kp = xlogy(p, p / m), kq = xlogy(q, q / m) with
m = lerp(p, q, beta) (xlogy gives 0 at weight 0 in the same pass), and beta = 0, 1 from torch's
log_softmax: fewer passes over a chunk, the same values to float rounding. The hard part is the student's
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
backends/triton/kernels_distill.py (mirrored), distributed/_distill_shards.py (per vocabulary
shard: `divergence_terms_` on the shard, the row totals all-reduced, `divergence_finish_`).
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


def _dim_view(z: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(z, out, dim) seen so that the class dim is a contiguous run or the outer dim of a contiguous
    tensor: a chunk of the CPU's linear loop is a transposed view of a (V, n) buffer, and torch's
    softmax kernels copy a non-contiguous input but run on dim 0 of the buffer in place."""
    if not z.is_contiguous() and z.t().is_contiguous() and out.t().is_contiguous():
        return z.t(), out.t(), 0
    return z, out, 1


def softmax_(z: torch.Tensor, out: torch.Tensor, *, log: bool = False) -> torch.Tensor:
    """out (like z) = softmax(z) (log_softmax with ``log``) along dim 1 by torch's fused row kernel,
    relative to the row max (a read for the max, one for the sum, one write, a few rows at a time
    in cache), where amax, sub, exp, sum, log, div were six passes over the chunk."""
    zz, oo, dim = _dim_view(z, out)
    torch.log_softmax(zz, dim, out=oo)
    # softmax as exp(log_softmax): torch 2.13's softmax kernel on a non-last dim gave other bits at
    # 1 and 2 threads for a (3000, 24) input (log_softmax: the same bits at every size tried)
    return out if log else out.exp_()


def poisoned(*log_probs: torch.Tensor) -> torch.Tensor:
    """(n,) rows whose log-softmax is nan: torch's kernel makes a whole row nan when one of its
    logits is nan or +inf (or all are -inf), so one column tells."""
    bad = torch.isnan(log_probs[0][:, 0])
    for lp in log_probs[1:]:
        bad = bad | torch.isnan(lp[:, 0])
    return bad


def _weighted(x: torch.Tensor) -> torch.Tensor:
    """x = a * (log a - log b) in place, 0 where it is nan (a = 0 against a log that is -inf: 0 log 0
    = 0), +-inf kept (a > 0 where the other log is -inf); a nan of a nan row is restored by
    `poisoned`. One pass (compare + fill would be two)."""
    return x.nan_to_num_(0.0, math.inf, -math.inf)


def divergence_(s: torch.Tensor, u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor,
                beta: float, *, p_ready: bool) -> tuple[torch.Tensor, float]:
    """In place, the fused kernels' step on a chunk: (D per row (n,), c) with s (n, V) overwritten by
    dD/dz / c (the gradient w.r.t. the tempered student logits, up to the factor c the caller folds
    into its own last multiply). s, u: the tempered student and teacher logits (scratch); p: the
    student's softmax, already there with ``p_ready`` (else computed); q, x: buffers like s.

    The two softmaxes by torch's row kernel, then `divergence_terms_` and `divergence_finish_` with
    the row's own sums (a vocabulary shard runs the same two steps with its partial sums added over
    the ranks in between: distributed/distillation.py). About 9 passes over the chunk beside the
    two softmaxes."""
    if beta == 0.0 or beta == 1.0:
        softmax_(u, q, log=True)
        softmax_(s, x, log=True)
        bad = poisoned(q, x)
        if not p_ready:
            torch.exp(x, out=p)
        d_row, k_row = divergence_terms_(s, u, p, q, x, beta)
        return torch.where(bad, math.nan, d_row), divergence_finish_(s, p, k_row, beta)
    if not p_ready:
        softmax_(s, p)
    softmax_(u, q)
    d_row, k_row = divergence_terms_(s, u, p, q, x, beta)
    return d_row, divergence_finish_(s, p, k_row, beta)


def divergence_terms_(s: torch.Tensor, u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor,
                      beta: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The divergence's per-class terms on a block of classes (n, V_b) of distributions normalised over
    ALL classes: (D_b, K_b) the block's sums of D's terms and of the gradient's row factor, and s (n, V_b)
    overwritten by the gradient's per-class part, so that dD/dz / c = s - p K with the rows' total
    K = sum_b K_b (`divergence_finish_`). Inputs: beta = 0 and 1: x = lp, q = lq (log-probs),
    p = exp(lp); else p, q the probabilities (x scratch). u is scratch.

    beta = 0      terms q (lq - lp),  s = p - q,          K None (the gradient needs no row sum)
    beta = 1      terms p (lp - lq),  s = p (lp - lq),    K = D
    else          m = lerp(p, q, beta), kp = xlogy(p, p / m), kq = xlogy(q, q / m),
                  D = beta sum kq + (1 - beta) sum kp,  s = kp,  K = sum kp

    The logs work on lq - lp, lp - lq; the mixture on the probabilities: xlogy gives 0 at weight 0 in
    the same pass, and p / m is a ratio of nearby numbers where lp - log m subtracts two large logs;
    m is floored at the least float so that 0 / 0 (both underflow) reads 0 / tiny = 0."""
    if beta == 0.0:  # D = sum q (lq - lp), dD/dz = p - q
        torch.sub(q, x, out=x)
        q.exp_()
        d_row = row_sum(_weighted(x.mul_(q)))
        torch.sub(p, q, out=s)
        return d_row, None
    if beta == 1.0:  # D = sum p (lp - lq), dD/dz = p (lp - lq) - p D
        d_row = row_sum(_weighted(torch.sub(x, q, out=s).mul_(p)))
        return d_row, d_row
    torch.lerp(p, q, beta, out=x).clamp_min_(_TINY[x.dtype])  # m
    kq = torch.special.xlogy(q, torch.div(q, x, out=u), out=u)
    kp = torch.special.xlogy(p, torch.div(p, x, out=s), out=s)
    k_row = row_sum(kp)
    return beta * row_sum(kq) + (1.0 - beta) * k_row, k_row


def divergence_finish_(s: torch.Tensor, p: torch.Tensor, k_row: torch.Tensor | None, beta: float) -> float:
    """s -= p K (K the rows' total of `divergence_terms_`' K_b), in place: s is then dD/dz / c; returns
    c (1 - beta for the mixture: the JSD's gradient is (1 - beta) (kp - p K); else 1)."""
    if k_row is not None:
        s.addcmul_(p, k_row.unsqueeze(1), value=-1.0)
    return 1.0 - beta if 0.0 < beta < 1.0 else 1.0


_TINY = {dt: torch.finfo(dt).smallest_normal * torch.finfo(dt).eps for dt in (torch.float32, torch.float64)}


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
