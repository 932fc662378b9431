"""The head's products for one token chunk on one vocabulary shard, shared by the vocab-parallel
log-probs and distillation losses: the shard's logits ``x_c W_r^T (+ b_r)``, and the gradients
of a chunk's logit gradient G (n, V_r): grad_x[c] = G W_r (this rank's partial), grad_W_r += G^T x_c,
grad_b_r += sum_rows G. The products run in the input dtype, as F.linear's; the sums in the
compute dtype."""

from __future__ import annotations

import torch


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


def zero_grads(x: torch.Tensor, w: torch.Tensor, want, acc: torch.dtype):
    """(grad_x (N, D), grad_W_r, grad_b_r) zeros in ``acc``, None where ``want`` says no."""
    want_x, want_w, want_b = want
    gx = torch.zeros(x.shape, dtype=acc, device=x.device) if want_x else None
    gw = torch.zeros(w.shape, dtype=acc, device=x.device) if want_w else None
    gb = torch.zeros(w.shape[0], dtype=acc, device=x.device) if want_b else None
    return gx, gw, gb


def add_chunk_grads(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, cut: slice, grads) -> None:
    """Add the chunk ``cut``'s logit gradient g (n, V_r) into grads = (gx, gw, gb) (any None)."""
    gx, gw, gb = grads
    if gb is not None:
        gb += g.sum(0)
    low = g.to(x.dtype)
    if gx is not None:
        gx[cut] = torch.mm(low, w).to(gx.dtype)
    if gw is not None:
        gw += torch.mm(low.t(), x[cut]).to(gw.dtype)
