"""The math of a vocabulary split over ranks: per-row partial statistics, their two all-reduces,
the global loss, and each rank's exact gradient of its own logits.

Rank r holds the logits z_ic of its classes c in [start, stop) (after the softcap, if any:
z = s tanh(x / s)). One sample i has, over all C classes (w: class weights, 1 without; eps:
label smoothing; zl: z_loss; v_i = 0 for an ignored target, else 1; t'_ic = (1-eps) t_ic + eps/C)::

    lse_i = M_i + log S_i,   M_i = max_r m_ir,   S_i = sum_r exp(m_ir - M_i) s_ir
            m_ir = max_{c in r} z_ic,  s_ir = sum_{c in r} exp(z_ic - m_ir)
    hard  l_i = v_i ((1-eps) w_t (lse_i - z_it) + eps/C (W lse_i - sum_c w_c z_ic)) + v_i zl lse_i^2
    soft  l_i = A_i lse_i - B_i + zl lse_i^2,   A_i = sum_c w_c t'_ic,  B_i = sum_c w_c t'_ic z_ic

Everything that sums over classes splits into per-rank partials: s_ir (rescaled by exp(m_ir - M_i)
once M_i is known), z_it (only the rank that owns t contributes; the others add 0, so the sum is
exact), sum_c w_c z_ic, A_i, B_i. W = sum_c w_c and w_t come from the full (replicated) class
weight and the global targets: no collective. So the forward runs

    all_reduce MAX   m   [M]          then   all_reduce SUM   [k, M]  (k = 2 hard, 3 with eps > 0
                                                                       or probability targets)

and z_loss, softcap, ignore_index and the 'mean' denominator need nothing more. Megatron's
label-smoothing bug (issues 737, 7464) is taking C and the sum over classes locally; here eps/C
uses the global C and the class sum is one of the partials.

Gradient (rank-local, no collective): with p_ic = exp(z_ic - lse_i) and a per-sample factor g_i
(grad_output, times 1/den for 'mean')::

    dl_i/dz_ic = a_i p_ic - b_ic
      hard  a_i = v_i ((1-eps) w_t + eps/C W + 2 zl lse_i),  b_ic = v_i ((1-eps) w_t [c = t_i] + eps/C w_c)
      soft  a_i = A_i + 2 zl lse_i,                          b_ic = w_c t'_ic
    dz/dx = 1 - (z / s)^2 under a softcap.

(The single-device kernel, backends/chunked/kernel.py, uses the same a/b decomposition.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._options import LossOptions
from ..backends.common import deterministic_sum
from . import _comm
from ._layout import Comm, Vocab


@dataclass
class Targets:
    """Per-sample target data of M samples (the rows of the (M, V_r) logits), compute dtype.

    index (M,) global class indices or None; probs (M, V_r) this rank's probabilities or None.
    valid (M,) bool; w_t (M,) w[t] (1 without weights), 0 where ignored; owned (M,) bool: the
    target is one of this rank's classes; local (M,) its column here (0 where not owned).
    wl (V_r,) this rank's class weights or None; W: sum of all class weights (C without)."""

    index: torch.Tensor | None
    probs: torch.Tensor | None
    valid: torch.Tensor | None = None
    w_t: torch.Tensor | None = None
    owned: torch.Tensor | None = None
    local: torch.Tensor | None = None
    wl: torch.Tensor | None = None
    W: float | torch.Tensor = 0.0

    def rows(self, i: int, j: int) -> Targets:
        cut = lambda t: t[i:j] if t is not None else None
        return Targets(cut(self.index), cut(self.probs), cut(self.valid), cut(self.w_t),
                       cut(self.owned), cut(self.local), self.wl, self.W)


def prepare(index, probs, weight, vocab: Vocab, ignore_index: int, acc) -> Targets:
    """The per-sample values for all M samples at once (one gather, not one per chunk)."""
    wl = weight[vocab.start:vocab.stop].to(acc) if weight is not None else None
    W = deterministic_sum(weight.to(acc)) if weight is not None else float(vocab.num_classes)
    tg = Targets(index, probs, wl=wl, W=W)
    if index is not None:
        valid = index != ignore_index
        tg.valid = valid
        safe = torch.where(valid, index, 0)
        if weight is not None:
            tg.w_t = torch.where(valid, weight.to(acc)[safe], 0.0)
        else:
            tg.w_t = valid.to(acc)
        tg.owned = valid & (index >= vocab.start) & (index < vocab.stop)
        tg.local = torch.where(tg.owned, index - vocab.start, 0)
    return tg


def num_partials(opts: LossOptions) -> int:
    return 3 if opts.soft or opts.label_smoothing > 0.0 else 2


def cap(x: torch.Tensor, opts: LossOptions, acc) -> torch.Tensor:
    """The chunk's logits in the compute dtype, softcapped: z = s tanh(x / s)."""
    z = x.to(acc)
    if opts.softcap is not None:
        z = torch.div(z, opts.softcap).tanh_().mul_(opts.softcap)
    return z


def chunk_partials(z: torch.Tensor, tg: Targets, opts: LossOptions, vocab: Vocab):
    """One chunk of rows, z (n, V_r) compute dtype -> (m (n,), partials (k, n)): the local row
    max and [s, z_t, sum w z] (hard) or [s, A, B] (probabilities), s relative to m."""
    n, v = z.shape
    eps, C = opts.label_smoothing, vocab.num_classes
    parts = z.new_zeros(num_partials(opts), n)
    if v == 0:  # an empty shard: m = -inf, every partial 0 (exp(-inf - M) s = 0 later)
        return z.new_full((n,), float("-inf")), parts
    m = z.amax(1)
    parts[0] = (z - m.unsqueeze(1)).exp_().sum(1)
    if tg.probs is not None:
        t = tg.probs.to(z.dtype)
        if eps > 0.0:
            t = t * (1.0 - eps) + eps / C
        tw = t * tg.wl if tg.wl is not None else t
        parts[1] = tw.sum(1)
        parts[2] = (tw * z).sum(1)
        return m, parts
    z_t = z.gather(1, tg.local.unsqueeze(1)).squeeze(1)
    parts[1] = torch.where(tg.owned, z_t, 0.0)
    if eps > 0.0:
        parts[2] = (z * tg.wl).sum(1) if tg.wl is not None else z.sum(1)
    return m, parts


def combine(m: torch.Tensor, parts: torch.Tensor, comm: Comm):
    """The two forward collectives: (lse (M,), the summed partials (k, M))."""
    m_all = _comm.all_reduce_max(m, comm.tp)
    # exp(m - M) <= 1; an empty shard's m = -inf gives 0 (and its s is 0 anyway)
    parts[0] = parts[0] * torch.exp(m - m_all)
    parts = _comm.all_reduce_sum(parts, comm.tp, comm.deterministic)
    return m_all + torch.log(parts[0]), parts


def losses(lse, parts, tg: Targets, opts: LossOptions, vocab: Vocab):
    """(per-sample losses l (M,), the gradient's a (M,)) from the global statistics."""
    eps, zl, C = opts.label_smoothing, opts.z_loss, vocab.num_classes
    if tg.probs is not None:
        A, B = parts[1], parts[2]
        loss, a = A * lse - B, A
        if zl:
            loss, a = loss + zl * lse * lse, a + 2.0 * zl * lse
        return loss, a
    z_t = parts[1]
    loss = (1.0 - eps) * tg.w_t * (lse - z_t)
    a = (1.0 - eps) * tg.w_t
    if eps > 0.0:
        loss = loss + (eps / C) * (tg.W * lse - parts[2])
        a = a + (eps / C) * tg.W
    if zl:
        loss, a = loss + zl * lse * lse, a + 2.0 * zl * lse
    # where, not a product: an ignored sample's loss and gradient are exactly 0
    return torch.where(tg.valid, loss, 0.0), torch.where(tg.valid, a, 0.0)


def chunk_grad(z: torch.Tensor, lse, a, g, tg: Targets, opts: LossOptions, vocab: Vocab,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """d(sum_i g_i l_i)/dx on one chunk (n, V_r), compute dtype; z are the chunk's (capped)
    logits, lse/a/g (n,) or g a 0-d factor. Written into ``out`` (the caller's gradient rows, when
    they have the compute dtype: no extra copy) or a fresh buffer; never over z (unless z is out)."""
    eps, C = opts.label_smoothing, vocab.num_classes
    g = g if g.dim() == 0 else g.unsqueeze(1)
    out = torch.sub(z, lse.unsqueeze(1), out=out).exp_().mul_(a.unsqueeze(1) * g)
    if tg.probs is not None:
        t = tg.probs.to(z.dtype)
        if eps > 0.0:
            t = t * (1.0 - eps) + eps / C
        tw = t * tg.wl if tg.wl is not None else t
        out.sub_(tw * g)
    else:
        if eps > 0.0:
            smooth = (eps / C) * tg.valid.to(z.dtype).unsqueeze(1) * g
            out.sub_(smooth * tg.wl if tg.wl is not None else smooth)
        if out.shape[1]:
            hit = (1.0 - eps) * torch.where(tg.owned, tg.w_t, 0.0)
            hit = hit * g.squeeze(1) if g.dim() else hit * g
            out.scatter_add_(1, tg.local.unsqueeze(1), -hit.unsqueeze(1))
    if opts.softcap is not None:
        out.mul_(torch.div(z, opts.softcap).square_().neg_().add_(1.0))  # 1 - tanh^2
    return out


def reduce(loss, tg: Targets, opts: LossOptions, num_samples: int, comm: Comm, acc):
    """(the scalar value, its 0-d gradient factor 1/den or 1) of 'sum' / 'mean', summed over the
    data-parallel groups of a DTensor input (one SUM of [sum, den]: 2 numbers)."""
    total = deterministic_sum(loss)
    den = None
    if opts.reduction == "mean":
        if isinstance(opts.normalizer, torch.Tensor):
            den = opts.normalizer.to(device=loss.device, dtype=acc).reshape(())
        elif opts.normalizer is not None:
            den = torch.tensor(opts.normalizer, dtype=acc, device=loss.device)
        elif tg.index is None:
            den = torch.tensor(float(num_samples), dtype=acc, device=loss.device)
        else:
            den = deterministic_sum(tg.w_t)
    if comm.dp:
        # a caller's normalizer is already global: only the sum and the count are local
        own_den = opts.reduction == "mean" and opts.normalizer is None
        pair = torch.stack([total, den if own_den else torch.zeros_like(total)])
        for group in comm.dp:
            pair = _comm.all_reduce_sum(pair, group, comm.deterministic)
        total = pair[0]
        if own_den:
            den = pair[1]
    if den is None:
        return total, torch.ones((), dtype=acc, device=loss.device)
    inv = torch.where(den != 0, 1.0 / den, 0.0)  # all ignored: nan loss (as torch), 0 gradient
    return total / den, inv


def fresh(t: torch.Tensor) -> torch.Tensor:
    """A Function's output that is no view (FSDP2 warns that a view returned from a module's
    forward loses its pre-backward hook under in-place ops; a reshape of the losses is a view)."""
    return t.clone() if t._base is not None else t
