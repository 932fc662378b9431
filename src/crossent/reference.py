"""The losses of crossent, written plainly from their formulas: the specification and test oracle.

Every function casts its inputs to float64, computes the loss with elementary tensor ops (max, exp,
log, log1p, tanh, sum, gather, where, clamp) and returns float64. (``precision=`` evaluates the
same formulas in another dtype: `backends/composite.py` runs them in the compute dtype, float32,
as a plain differentiable composition for torch.func, torch.compile and second derivatives.) Nothing here calls torch's own
cross_entropy, nll_loss, log_softmax, softmax, logsumexp, sigmoid or binary_cross_entropy*, so
comparing against torch is a comparison with an independent implementation. Autograd through these
functions gives the reference gradients. Inputs are assumed valid; `_checks.py` validates.

Notation: input x of shape (N, C, d1..dk), (N, C) or unbatched (C,); the class dim is 1, or 0 when
unbatched. A "sample" is one position i of the (N, d1..dk) grid; the per-sample losses l_i are what
reduction='none' returns. log p_ic = x_ic - lse_i with lse_i = log sum_c exp(x_ic).

The semantics are PyTorch's (aten/src/ATen/native/LossNLL.cpp: `cross_entropy_loss_symint`,
`cross_entropy_loss_prob_target`, `cross_entropy_loss_label_smoothing`, `nll_loss_out_frame`;
aten/src/ATen/native/Loss.cpp for the binary losses), checked value by value in
tests/test_reference.py. Torch lets gradients flow into the class weight (and target) only for
probability targets; here every float argument is differentiable, so a caller comparing gradients
with torch compares only those torch gives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._reference_softmax import log_p_and_lse as _log_softmax


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Cross-entropy between logits `input` and class indices or class probabilities `target`.

    softcap s (Gemma 2): first x <- s * tanh(x / s).  z_loss z (PaLM): adds z * lse_i^2 to the loss
    of every counted sample, unweighted; 'mean' keeps the denominator it has without z_loss.
    eps = label_smoothing, w = weight (all ones when None), C = number of classes.

    Class indices (target of shape (N, d1..dk) or (), int64 or uint8, as torch accepts):
        l_i = (1 - eps) * w[t_i] * (-log p_i[t_i]) + (eps / C) * sum_c w_c * (-log p_ic) + z * lse_i^2
        l_i = 0 where t_i == ignore_index (any int, a valid class included)
        'mean' = sum_i l_i / sum_{i counted} w[t_i]   (nan when nothing is counted, as torch)
    Torch computes the two eps terms separately (nll_loss_nd and the smoothing sum in
    `cross_entropy_loss_label_smoothing`) but divides both by the same sum of target weights.

    Probabilities (target of the input's shape, float; `ignore_index` unused, torch rejects it):
        t'_ic = t_ic * (1 - eps) + eps / C
        l_i = -sum_c w_c * t'_ic * log p_ic + z * lse_i^2
        'mean' = sum_i l_i / (number of samples)   -- not divided by the weights
                 (`cross_entropy_loss_prob_target`; nan for an empty batch)

    Torch picks the probability form exactly when target.shape == input.shape; so does this.
    """
    x = input.to(precision)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    class_dim = 0 if x.dim() == 1 else 1
    n_classes = x.shape[class_dim]
    log_p, lse = _log_softmax(x, class_dim)  # (N, C, d..), (N, d..)
    w = _class_weight(weight, x.dim(), class_dim, precision)  # (1, C, 1..) or 1.0
    eps = label_smoothing

    if target.shape == input.shape:
        t = target.to(precision) * (1 - eps) + eps / n_classes  # (N, C, d..)
        loss = -(w * t * log_p).sum(class_dim)  # (N, d..); a -inf logit with t = 0: nan, as torch
        if z_loss:
            loss = loss + z_loss * lse**2
        return _reduce(loss, reduction, denominator=loss.numel())

    nll, w_t, counted = _target_terms(log_p, target, weight, ignore_index, class_dim, precision)  # (N, d..)
    loss = w_t * nll
    if eps > 0.0:  # (as torch: only then, since at eps = 0 a -inf logit would make 0 * inf = nan)
        smooth = -(w * log_p).sum(class_dim)  # (N, d..)
        loss = (1 - eps) * loss + (eps / n_classes) * smooth
    if z_loss:
        loss = loss + z_loss * lse**2
    # where, not a multiplication by the mask: an ignored sample must get an exact 0 gradient
    # even when 'mean' divides by a zero total weight (all ignored -> 0/0 = nan loss, as torch).
    loss = torch.where(counted, loss, 0.0)
    return _reduce(loss, reduction, denominator=torch.where(counted, w_t, 0.0).sum())


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Negative log-likelihood of class indices `target` under log-probabilities `input`.

        l_i = w[t_i] * (-input_i[t_i]),   l_i = 0 where t_i == ignore_index
        'mean' = sum_i l_i / sum_{i counted} w[t_i]   (w = 1 when None; nan when nothing counted)

    Shapes as for `cross_entropy` with class indices; `input` need not be normalised.
    """
    log_p = input.to(precision)
    class_dim = 0 if log_p.dim() == 1 else 1
    nll, w_t, counted = _target_terms(log_p, target, weight, ignore_index, class_dim, precision)
    loss = torch.where(counted, w_t * nll, 0.0)  # (N, d..)
    return _reduce(loss, reduction, denominator=torch.where(counted, w_t, 0.0).sum())


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Binary cross-entropy between probabilities p = `input` and targets y in [0, 1].

        l = -w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))
        'mean' = sum l / numel   (w broadcasts to the input; it does not enter the denominator)

    The -100 floor is torch's (Loss.cpp `binary_cross_entropy_out_cpu`): l stays finite at p = 0, 1.
    The gradients are torch's backward formulas, not the floored formula's derivative (they differ
    where the floor or the clamp acts: p = 0 or 1, p (1 - p) < 1e-12):

        dl/dp = w (p - y) / max(p (1 - p), 1e-12)        dl/dy = w (log(1 - p) - log p)

    (`_BCEGradients` attaches them: the loss's value is the formula's.)
    """
    p, y = input.to(precision), target.to(precision)
    loss = -(y * _floored_log(p) + (1 - y) * _floored_log(1 - p))
    loss = loss.detach() + _BCEGradients.apply(p, y)  # value: the formula's; gradients: torch's
    if weight is not None:
        loss = loss * weight.to(precision)
    return _reduce(loss, reduction, denominator=loss.numel())


# torch's EPSILON in binary_cross_entropy_backward: the float literal 1e-12f, i.e. this value.
_BCE_EPS = 9.999999960041972e-13


class _BCEGradients(torch.autograd.Function):
    """Zero in value; its gradients are torch's BCE backward formulas (see binary_cross_entropy),
    written in differentiable ops, so a second derivative differentiates them as torch's does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(p, y):
        return torch.zeros_like(p)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        p, y = ctx.saved_tensors
        gp = (p - y) / torch.clamp(p * (1 - p), min=_BCE_EPS)
        gy = torch.log1p(-p) - torch.log(p)
        return grad * gp, grad * gy


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Binary cross-entropy between logits x = `input` and targets y in [0, 1].

        l = -w * (pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))
        'mean' = sum l / numel

    w and pw (pos_weight, e.g. one per class of the last dim) broadcast to the input, as in torch.
    log(1 - sigmoid(x)) = log sigmoid(-x), and both are computed without overflow (see
    `_log_sigmoid`), so logits of +-100 and beyond give exact losses and gradients. At x = -inf
    the loss is nan, torch's value.
    """
    x, y = input.to(precision), target.to(precision)
    pw = 1.0 if pos_weight is None else pos_weight.to(precision)
    loss = -(pw * y * _log_sigmoid(x) + (1 - y) * _log_sigmoid(-x))
    # torch's value at x = -inf is nan for every y (its (1 - y) x - k log sigmoid(x) is -inf + inf);
    # the formula above would give +inf for y > 0. (Gradients are finite either way.)
    # (added, not selected: the gradient stays the formula's, -pw y there, as torch's)
    loss = loss + torch.where(x == float("-inf"), float("nan"), 0.0)
    if weight is not None:
        loss = loss * weight.to(precision)
    return _reduce(loss, reduction, denominator=loss.numel())


def _class_weight(weight: Tensor | None, ndim: int, class_dim: int, precision) -> Tensor | float:
    """The class weight shaped to broadcast along the class dim: (C,) -> (1, C, 1, .., 1)."""
    if weight is None:
        return 1.0
    shape = [1] * ndim
    shape[class_dim] = -1
    return weight.to(precision).view(shape)


def _target_terms(
    log_p: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, class_dim: int, precision
) -> tuple[Tensor, Tensor, Tensor]:
    """(-log p_i[t_i], w[t_i], t_i != ignore_index), each of the target's shape (N, d1..dk).

    Ignored positions read class 0 instead, any valid class, so that gather stays in range;
    callers mask them out with `where`.
    """
    t = target.long()  # torch accepts int64 and uint8 class indices
    counted = t != ignore_index
    t = torch.where(counted, t, 0)
    nll = -log_p.gather(class_dim, t.unsqueeze(class_dim)).squeeze(class_dim)
    w_t = torch.ones_like(nll) if weight is None else weight.to(precision)[t]
    return nll, w_t, counted


def _floored_log(z: Tensor) -> Tensor:
    """max(log z, -100), with log taken of 1 where z = 0 (then replaced by -100): the same value,
    but at z = 0 autograd gives 0 instead of the nan of 0 * (d log z / dz) = 0 * inf.

    Not log(max(z, e^-100)): e^-100 is a float32 denormal, which flush-to-zero reads as 0, giving
    log 0 = -inf and a nan loss -- after torch.set_flush_denormal(True), and on torch 2.4 after any
    Inductor compile in the process (its -ffast-math kernels set the CPU's FTZ/DAZ flags)."""
    positive = z > 0
    return torch.where(positive, torch.log(torch.where(positive, z, 1.0)), -100.0).clamp(min=-100.0)


def _log_sigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = -log(1 + e^-x) = min(x, 0) - log1p(e^-|x|), which never overflows.

    At x = 0 autograd splits the min's gradient 1/2 : 1/2 and |x|' = 0, giving the exact 1/2.
    """
    return torch.minimum(x, torch.zeros_like(x)) - torch.log1p(torch.exp(-x.abs()))


def _reduce(loss: Tensor, reduction: str, denominator: Tensor | int) -> Tensor:
    """'none': the per-sample losses; 'sum': their sum; 'mean': their sum / denominator."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / denominator


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | None = None,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor:
    """Cross-entropy of a linear layer's output: the contract every linear backend meets.

    input (N, D) or (D,); linear_weight (C, D), or (C, d1..dk, D) for K-dimensional heads (torch's
    ``out_features``; batched input only); linear_bias (C,) or (C, d1..dk); weight (C,) class
    weights. With P = d1*..*dk::

        logits = (input @ linear_weight.reshape(C * P, D).T + linear_bias.reshape(C * P))
                 .reshape(*input.shape[:-1], C, d1, .., dk)
        loss = cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                             z_loss, softcap)     # class indices or probabilities, as there
        normalizer (reduction 'mean' only): sum_i l_i / normalizer instead of the 'mean'
                   denominator -- the count (or summed class weights) of counted targets over the
                   whole accumulated batch, for gradient accumulation (transformers'
                   ``num_items_in_batch``).

    The targets are class probabilities exactly when ``target.shape == logits.shape`` (torch's
    rule); then ``ignore_index`` does not apply.
    """
    x = input.to(precision)
    c, d = linear_weight.shape[0], linear_weight.shape[-1]
    out = tuple(linear_weight.shape[1:-1])
    logits = x @ linear_weight.to(precision).reshape(-1, d).T
    if linear_bias is not None:
        logits = logits + linear_bias.to(precision).reshape(-1)
    logits = logits.reshape(*input.shape[:-1], c, *out)
    if normalizer is None:
        return cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                             z_loss=z_loss, softcap=softcap, precision=precision)
    total = cross_entropy(logits, target, weight, ignore_index, "sum", label_smoothing,
                          z_loss=z_loss, softcap=softcap, precision=precision)
    return total / normalizer


def log_probs(
    input: Tensor,
    target: Tensor,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    return_entropy: bool = False,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probability of the target class, and the entropy, of logits (*, C) -- the
    class dim is the last one, as a language model's (B, T, V) logits have it.

        z = softcap * tanh(x / softcap)   (if softcap is given), then  z = z / temperature
        log p_ic = z_ic - lse_i,   lse_i = log sum_c exp(z_ic)
        log_probs_i = log p_{i, t_i}
        entropy_i   = -sum_c p_ic log p_ic     (0 log 0 = 0: a -inf logit adds nothing, as
                                                torch.special.entr; -(softmax * log_softmax).sum()
                                                would give nan there)
        both 0 where t_i == ignore_index (and no gradient flows from them)

    target (*) class indices. Returns log_probs (*) and, with ``return_entropy``, (log_probs,
    entropy). Differentiable in ``input`` (autograd through these formulas is the reference
    gradient: dH/dz_c = -p_c (log p_c + H), d log p_t / dz_c = [c = t] - p_c).
    """
    x = input.to(precision)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    z = x / temperature
    log_p, _ = _log_softmax(z, z.dim() - 1)  # (*, C)
    t = target.long()
    counted = t != ignore_index
    safe = torch.where(counted, t, 0)
    picked = log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    lp = torch.where(counted, picked, 0.0)
    if not return_entropy:
        return lp
    p = torch.exp(log_p)
    # where twice: the product's gradient at p = 0 would otherwise be 0 * log 0 = nan
    finite_log_p = torch.where(p > 0, log_p, 0.0)
    entropy = -(p * finite_log_p).sum(-1)
    return lp, torch.where(counted, entropy, 0.0)


def linear_log_probs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    return_entropy: bool = False,
    *,
    precision: torch.dtype = torch.float64,
) -> Tensor | tuple[Tensor, Tensor]:
    """`log_probs` of a linear layer's output: input (*, D), linear_weight (V, D), linear_bias
    (V,), target (*)::

        logits = input @ linear_weight.T + linear_bias      (*, V)
        log_probs(logits, target, ignore_index, temperature, softcap, return_entropy)
    """
    logits = input.to(precision) @ linear_weight.to(precision).T
    if linear_bias is not None:
        logits = logits + linear_bias.to(precision)
    return log_probs(logits, target, ignore_index, temperature, softcap, return_entropy, precision=precision)
# The distillation losses (their formulas and conventions are in _reference_distillation.py).
from ._reference_distillation import (  # noqa: E402, F401
    generalized_jsd,
    linear_distillation_loss,
    linear_topk_distillation_loss,
)
