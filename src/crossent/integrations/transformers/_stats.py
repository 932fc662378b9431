"""Per-token statistics of the head's distribution, without the (N, V) logits: TRL's metrics.

For logits z = softcap * tanh(scale * (x W^T + b) / softcap) (scale, softcap as the patch read
them) and p = softmax(z), per token row i with target t_i::

    entropy[i]          = lse_i - sum_v p_iv z_iv                    (lse_i = logsumexp_v z_iv)
    is_top1[i]          = argmax_v z_iv == t_i                       (the first maximum, as TRL)
    mean_logits[i]      = mean_v z_iv
    log_sum_sq_probs[i] = logsumexp_v 2 (z_iv - lse_i)

computed without gradient (TRL detaches all four, and marks the last three non-differentiable),
``rows`` tokens at a time: extra memory ~3 rows V float32 (12 bytes per logit), with rows chosen so
that this stays within max(16 MiB, 7/8 of the float32 weight gradient) -- the budget crossent's
fused loss uses for its own chunk -- never O(N V). Cost: one (N, D) x (D, V) product, 2 N D V
FLOPs, beside the loss's own pass (crossent's fused loss returns the loss only).
"""

from __future__ import annotations

import torch

NAMES = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
_MIN_BUDGET_BYTES = 16 * 2**20


def _rows(n: int, vocab: int, dim: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    budget = max(_MIN_BUDGET_BYTES, 7 * vocab * dim * 4 // 8)
    return max(1, min(n, budget // (12 * vocab)))


@torch.no_grad()
def per_token(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
    wanted: tuple[str, ...], *, scale: float, softcap: float | None, chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """x (N, D), weight (V, D), target (N,): {name: (N,)} for the names in ``wanted``
    (float32, is_top1 bool). Rows whose target is ignored get values all the same (callers mask)."""
    n, vocab = x.shape[0], weight.shape[0]
    out = {name: torch.empty(n, device=x.device, dtype=torch.bool if name == "is_top1" else torch.float32)
           for name in NAMES if name in wanted}
    if not out:
        return out
    rows = _rows(n, vocab, x.shape[1], chunk_size)
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        z = torch.nn.functional.linear(x[sl], weight, bias).float()  # (n, V): the chunk's logits
        if scale != 1.0:
            z.mul_(scale)
        if softcap is not None:
            z.div_(softcap).tanh_().mul_(softcap)
        if "is_top1" in out:
            out["is_top1"][sl] = z.argmax(-1) == target[sl]
        if "mean_logits" in out:
            out["mean_logits"][sl] = z.mean(-1)
        lse = torch.logsumexp(z, -1)  # (n,)
        if "entropy" in out or "log_sum_sq_probs" in out:
            z.sub_(lse.unsqueeze(-1))  # log p, in place
            if "log_sum_sq_probs" in out:
                out["log_sum_sq_probs"][sl] = torch.logsumexp(2 * z, -1)
            if "entropy" in out:
                out["entropy"][sl] = -(z.exp() * z).sum(-1)  # -sum p log p = lse - sum p z
    return out
