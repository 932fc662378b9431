"""The distillation losses written plainly from their formulas: specification and test oracle
(part of `crossent.reference`, which re-exports them; the same rules: float64, elementary ops
only -- no torch loss, log_softmax, softmax, logsumexp or kl_div -- autograd for the gradients).

Notation, per row i (a token): the student's logits z = cap(x W^T + b) and the teacher's
u = cap_t(x_t W_t^T + b_t) (cap(y) = s tanh(y / s) where a softcap s is given), temperature T,
p = softmax(z / T) the student's distribution, q = softmax(u / T) the teacher's, log m =
log((1 - beta) p + beta q). With TRL's convention (trl.DistillationTrainer's
``_chunked_divergence_loss`` and GKD's ``generalized_jsd_loss``, TRL 1.16; Agarwal et al. 2024,
"On-policy distillation of language models", eq. 1)::

    beta = 0        D = KL(q || p) = sum_c q_c (log q_c - log p_c)           forward KL
    beta = 1        D = KL(p || q) = sum_c p_c (log p_c - log q_c)           reverse KL
    0 < beta < 1    D = beta KL(q || m) + (1 - beta) KL(p || m)              generalized JSD

Terms whose weight is 0 (q_c = 0 in KL(q || .), p_c = 0 in KL(p || .)) count 0 (0 log 0 = 0:
a vocabulary entry masked with a -inf logit adds nothing; torch's ``F.kl_div`` gives nan there).
The temperature divides both models' capped logits; nothing multiplies D by T^2 (TRL does not;
pass ``soft_weight=T**2`` for Hinton's scaling).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._reference_softmax import log_p_and_lse as _log_softmax


def _head(x: Tensor, w: Tensor, b: Tensor | None, cap: float | None, precision) -> Tensor:
    """cap(x W^T + b) in ``precision``: (N, V)."""
    z = x.to(precision) @ w.to(precision).T
    if b is not None:
        z = z + b.to(precision)
    return cap * torch.tanh(z / cap) if cap is not None else z


def _weighted_log_ratio(log_a: Tensor, log_b: Tensor) -> Tensor:
    """a (log a - log b) elementwise, 0 where a = 0. The logs are replaced where a = 0 before
    they meet (a double where), so that autograd sees no inf - inf there either."""
    a = torch.exp(log_a)
    keep = a > 0
    return torch.where(keep, a * (torch.where(keep, log_a, 0.0) - torch.where(keep, log_b, 0.0)), 0.0)


def _log_add_exp(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b) = hi + log(1 + e^(lo - hi)), -inf where both are -inf."""
    hi = torch.maximum(a, b)
    lo = torch.minimum(a, b)
    finite = hi > float("-inf")
    safe_hi = torch.where(finite, hi, 0.0)
    out = safe_hi + torch.log1p(torch.exp(torch.where(finite, lo, 0.0) - safe_hi))
    return torch.where(finite, out, float("-inf"))


def generalized_jsd(log_p: Tensor, log_q: Tensor, beta: float) -> Tensor:
    """D per row (the class dim is 1) of student log-probs log_p and teacher log-probs log_q."""
    if beta == 0.0:
        return _weighted_log_ratio(log_q, log_p).sum(1)
    if beta == 1.0:
        return _weighted_log_ratio(log_p, log_q).sum(1)
    log_m = _log_add_exp(log_p + torch.log1p(torch.tensor(-beta, dtype=log_p.dtype)),
                         log_q + torch.log(torch.tensor(beta, dtype=log_p.dtype)))
    return beta * _weighted_log_ratio(log_q, log_m).sum(1) + (1 - beta) * _weighted_log_ratio(log_p, log_m).sum(1)


def _reduce(loss: Tensor, counted: Tensor, reduction: str, normalizer) -> Tensor:
    if reduction == "none":
        return loss
    if normalizer is not None:
        return loss.sum() / normalizer
    return loss.sum() if reduction == "sum" else loss.sum() / counted.sum()


def linear_distillation_loss(
    input: Tensor,
    linear_weight: Tensor,
    teacher_input: Tensor,
    teacher_linear_weight: Tensor,
    linear_bias: Tensor | None = None,
    teacher_linear_bias: Tensor | None = None,
    target: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    softcap: float | None = None,
    teacher_softcap: float | None = None,
    hard_weight: float = 0.0,
    soft_weight: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | None = None,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Distillation of a linear head from a teacher's linear head, per row i::

        l_i = soft_weight D_i + hard_weight CE_i     (each term only when its weight is not 0)
        CE_i = -log softmax(z_i)[t_i]                 the student's cross-entropy at temperature 1
        l_i = 0 where t_i == ignore_index (such rows count in neither term nor in 'mean')

    input (N, D), linear_weight (V, D), teacher_input (N, D_t), teacher_linear_weight (V, D_t),
    biases (V,), target (N,) class indices or None (every row counted; hard_weight must be 0).
    'mean' = sum_i l_i / (number of counted rows) (nan when none); 'sum'; 'none' (N,);
    normalizer: sum_i l_i / normalizer. The teacher's tensors are constants (detached).
    """
    z = _head(input, linear_weight, linear_bias, softcap, precision)
    u = _head(teacher_input.detach(), teacher_linear_weight.detach(),
              teacher_linear_bias.detach() if teacher_linear_bias is not None else None, teacher_softcap, precision)
    counted = torch.ones(z.shape[0], dtype=torch.bool) if target is None else target != ignore_index
    loss = torch.zeros(z.shape[0], dtype=precision)
    if soft_weight != 0.0:
        log_p, _ = _log_softmax(z / temperature, 1)
        log_q, _ = _log_softmax(u / temperature, 1)
        loss = loss + soft_weight * generalized_jsd(log_p, log_q, beta)
    if hard_weight != 0.0:
        log_p1, _ = _log_softmax(z, 1)
        picked = log_p1.gather(1, torch.where(counted, target, 0).unsqueeze(1)).squeeze(1)
        loss = loss - hard_weight * picked
    loss = torch.where(counted, loss, 0.0)
    return _reduce(loss, counted, reduction, normalizer)


def linear_topk_distillation_loss(
    input: Tensor,
    linear_weight: Tensor,
    teacher_ids: Tensor,
    teacher_log_probs: Tensor,
    linear_bias: Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    tail: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalizer: float | None = None,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Forward KL from a teacher known by its top k tokens, per row i: the support S_i = the ids
    of teacher_ids[i] that are not ignore_index, q_j = exp(teacher_log_probs[i, j]) on S_i,
    p = softmax(z_i / T) the student's full softmax::

        tail=True   one more bucket for the mass outside S_i on both sides:
                    q_tail = max(0, 1 - sum_{j in S} q_j),  p_tail = sum_{c not in S} p_c
                    l_i = sum_{j in S} q_j (log q_j - log p_j) + q_tail (log q_tail - log p_tail)
        tail=False  both renormalised over S_i: q'_j = q_j / sum_S q,  p'_j = p_j / sum_S p
                    l_i = sum_{j in S} q'_j (log q'_j - log p'_j)

    (0 log 0 = 0.) Rows whose ids are all ignore_index count 0 and are not counted by 'mean'.
    p_tail is summed over the classes outside S, not computed as 1 - sum p (which cancels when S
    holds almost all of the student's mass); q_tail is clamped at 0 (rounding of log-probs whose
    mass sums to 1).
    """
    z = _head(input, linear_weight, linear_bias, softcap, precision) / temperature
    log_p, _ = _log_softmax(z, 1)  # (N, V)
    valid = teacher_ids != ignore_index  # (N, k)
    safe = torch.where(valid, teacher_ids, 0)
    log_q = torch.where(valid, teacher_log_probs.detach().to(precision), float("-inf"))
    log_p_s = torch.where(valid, log_p.gather(1, safe), float("-inf"))  # (N, k)
    counted = valid.any(1)
    if tail:
        # (a count, not a boolean scatter: ignored entries all point at class 0, and which of
        # several writes to one place wins is unspecified)
        inside = torch.zeros(log_p.shape, dtype=torch.int64).scatter_add(1, safe, valid.long()) > 0
        p_tail = torch.where(inside, 0.0, torch.exp(log_p)).sum(1)
        q_tail = torch.clamp(1 - torch.exp(log_q).sum(1), min=0.0)
        loss = _weighted_log_ratio(log_q, log_p_s).sum(1) + _weighted_log_ratio(torch.log(q_tail), torch.log(p_tail))
    else:
        log_q_n = log_q - torch.log(torch.exp(log_q).sum(1, keepdim=True))
        log_p_n = log_p_s - torch.log(torch.exp(log_p_s).sum(1, keepdim=True))
        loss = _weighted_log_ratio(log_q_n, log_p_n).sum(1)
    loss = torch.where(counted, loss, 0.0)
    return _reduce(loss, counted, reduction, normalizer)
