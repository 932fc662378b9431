"""The shared chunk kernel: loss and gradient of cross-entropy on one chunk of logits.

Math (per sample i, class dim c, logits z = x, or softcap * tanh(x / softcap) with a softcap s)::

    lse_i   = log sum_c exp(z_ic)               p_ic = exp(z_ic - lse_i)
    hard    l_i = v_i * ( (1-eps) w_t (lse_i - z_it) + eps/C * (W lse_i - sum_c w_c z_ic) ) + v_i zl lse_i^2
    soft    l_i = A_i lse_i - sum_c w_c t'_ic z_ic + zl lse_i^2,   t' = (1-eps) t + eps/C,  A_i = sum_c w_c t'_ic
    dl_i/dz_ic = a_i p_ic - b_ic,  with
      hard  a_i = v_i ((1-eps) w_t + eps/C W + 2 zl lse_i),  b_ic = v_i ((1-eps) w_t [c = t] + eps/C w_c)
      soft  a_i = A_i + 2 zl lse_i,                        b_ic = w_c t'_ic
    dz/dx = 1 - (z / s)^2 under a softcap.

(w: class weights, 1 without; W = sum_c w_c; v_i = 0 for ignored samples, else 1; zl: z_loss.)

How: each chunk (~1M elements, it stays in the L3 cache) goes through amax, exp (written straight
into the gradient tensor the call must return anyway, or into a reused float32 buffer for 16-bit
inputs), sum, one multiply by a_i / sum and one scatter of -b. So forward+backward reads the logits
once and writes the gradient once. `ce_chunk` is used by the cross-entropy loop below and by the
linear loss (`linear.py`), which feeds it one chunk of logits at a time.

Determinism: every per-sample reduction runs over one row in a fixed order (a single-row chunk is
expanded to two rows so torch never splits it across threads), and totals go through
``common.deterministic_sum``. Results are bitwise identical run to run and for any thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._options import LossOptions
from ..common import SERIAL_REDUCTION, compute_dtype, deterministic_sum

# ~1M elements (4 MB of float32) per chunk. Each chunk costs ~15 Python-level torch ops (~5 us each
# here), so small chunks drown in dispatch; measured at 4096 x 32000 (2 threads), forward+backward
# / forward-only in ms: 256K 221/146, 512K 191/122, 1M 174/113, 2M 166/116.
CHUNK_ELEMENTS = 1 << 20
# On an accelerator (no Triton there: backends/triton is preferred) the ~15 ops per chunk are kernel
# launches of a few us each, and a chunk of 64M elements (256 MB of float32 work buffer) keeps an
# 8192 x 128256 loss at ~16 chunks (~250 launches) instead of ~1000 (~15,000). Not measured: no GPU.
DEVICE_CHUNK_ELEMENTS = 1 << 26


def chunk_elements(device) -> int:
    """Elements per chunk on ``device``."""
    return CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def _row_sum(e: torch.Tensor) -> torch.Tensor:
    """Sum over the class dim (1), each sample by a single thread in a fixed order."""
    if e.shape[1] > SERIAL_REDUCTION and e.numel() == e.shape[1]:
        # A lone output would be split across threads: expanding to two rows keeps it on one.
        return e.expand(2, *e.shape[1:]).sum(1)[:1]
    return e.sum(1)


def _chunks(x: torch.Tensor):
    """Yield index tuples covering x (N, C, D) or (N, C) in chunks of ~chunk_elements."""
    n, c = x.shape[0], x.shape[1]
    size = chunk_elements(x.device)
    if x.dim() == 2:
        rows = max(1, size // max(c, 1))
        for i in range(0, n, rows):
            yield (slice(i, i + rows),)
        return
    d = x.shape[2]
    if c * d <= size:
        rows = max(1, size // max(c * d, 1))
        for i in range(0, n, rows):
            yield (slice(i, i + rows),)
    else:
        cols = max(1, size // max(c, 1))
        for i in range(n):
            for j in range(0, d, cols):
                yield (slice(i, i + 1), slice(None), slice(j, j + cols))


@dataclass
class ChunkTarget:
    """What the chunk kernel needs to know about the targets of one chunk.

    Exactly one of ``index`` (class indices, int64, shape (n[, D])) or ``probs`` (class
    probabilities, shape (n, C[, D])) is set.
    """

    index: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    # Optional per-sample values precomputed for a whole tensor (sliced per chunk), so the chunk
    # loop runs only the class-dim work: valid = index != ignore_index, safe = index with ignored
    # set to 0 (n, 1[, D]), w_t = weight[safe] (0 where ignored), z_t = the target's logit.
    valid: torch.Tensor | None = None
    safe: torch.Tensor | None = None
    w_t: torch.Tensor | None = None
    z_t: torch.Tensor | None = None

    def rows(self, idx: tuple) -> ChunkTarget:
        """The part of the targets that belongs to chunk `idx` of the logits."""
        sample = _sample_index(idx)
        cut = lambda v, i: v[i] if v is not None else None
        return ChunkTarget(
            index=cut(self.index, sample), probs=cut(self.probs, idx), valid=cut(self.valid, sample),
            safe=cut(self.safe, idx), w_t=cut(self.w_t, sample), z_t=cut(self.z_t, sample),
        )


def _sample_index(idx: tuple) -> tuple:
    """A chunk's index into the logits (N, C[, D]) -> its index into per-sample values (N[, D])."""
    return (idx[0],) if len(idx) == 1 else (idx[0], idx[2])


def hard_target_terms(x, index, weight, opts, acc) -> ChunkTarget:
    """Per-sample target values for all of x at once (one gather over N, not one per chunk)."""
    valid = index != opts.ignore_index
    safe = torch.where(valid, index, 0).unsqueeze(1)
    z_t = x.gather(1, safe).squeeze(1).to(acc)
    if opts.softcap is not None:  # the same ops as on the chunk, so bitwise the same value
        z_t = torch.mul(torch.div(z_t, opts.softcap).tanh_(), opts.softcap)
    w_t = torch.where(valid, weight.to(acc)[safe.squeeze(1)], 0.0) if weight is not None else None
    return ChunkTarget(index=index, valid=valid, safe=safe, w_t=w_t, z_t=z_t)


def _col(v):
    """Per-sample values (n[, D]) -> (n, 1[, D]) to broadcast along the class dim; scalars pass."""
    return v.unsqueeze(1) if isinstance(v, torch.Tensor) and v.dim() > 0 else v


def _class_vec(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C,) class weights -> broadcastable along dim 1 of like (n, C[, D])."""
    return w.view(1, -1, *([1] * (like.dim() - 2)))


def ce_chunk(
    x: torch.Tensor,
    target: ChunkTarget,
    weight: torch.Tensor | None,
    weight_sum: float | torch.Tensor | None,
    opts: LossOptions,
    *,
    grad: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
    work: torch.Tensor | None = None,
    tanh_work: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (and optionally its gradient) of one chunk of logits.

    x       (n, C[, D]) logits, any float dtype; read only unless it is also ``grad``
    weight  (C,) class weights in the compute dtype, or None; weight_sum = sum_c w_c
    grad    None for loss only, or a tensor shaped like x that receives d(sum_i scale_i l_i)/dx
            (may be x itself: the in-place gradient)
    scale   per-sample factor (n[, D]) or a number, applied to the gradient only
    work / tanh_work  reusable compute-dtype buffers at least the chunk's size
    Returns (l, lse): per-sample losses (0 for ignored samples) and logsumexp, in the compute dtype.
    """
    acc = compute_dtype(x.dtype)
    eps, zl, cap = opts.label_smoothing, opts.z_loss, opts.softcap
    num_classes = x.shape[1]
    W = weight_sum if weight is not None else float(num_classes)  # sum_c w_c

    # The buffer that receives exp(z - max): the gradient itself when its dtype allows.
    if grad is not None and grad.dtype == acc:
        e = grad
    else:
        e = _take(work, x.shape, acc, x.device)

    # z: the (softcapped) logits in the compute dtype.
    th = None
    if cap is not None:
        th = _take(tanh_work, x.shape, acc, x.device)
        if x.dtype != acc:
            # 16-bit: x / cap in float32. torch.div(x, cap, out=th) computes in x's dtype and
            # only then widens: that rounding made bfloat16 gradients 4x less accurate.
            th.copy_(x).div_(cap).tanh_()
        else:
            torch.div(x, cap, out=th).tanh_()
        z = torch.mul(th, cap, out=e)
    elif x.dtype != acc:
        z = e.copy_(x)
    else:
        z = x

    m = z.amax(1, keepdim=True)
    index, probs = target.index, target.probs
    if eps > 0.0 and index is not None:  # sum_c w_c z_c, needed for the smoothing term
        wz = _row_sum(z * _class_vec(weight, z)) if weight is not None else _row_sum(z)
    if index is not None:
        valid = target.valid if target.valid is not None else index != opts.ignore_index
        safe = target.safe if target.safe is not None else torch.where(valid, index, 0).unsqueeze(1)
        z_t = target.z_t if target.z_t is not None else z.gather(1, safe).squeeze(1)
        if weight is None:
            w_t = None
        elif target.w_t is not None:
            w_t = target.w_t
        else:
            w_t = torch.where(valid, weight[safe.squeeze(1)], 0.0)
    else:
        # t' = (1-eps) t + eps/C itself, not its two parts: at a -inf logit t' z is -inf (torch's
        # inf loss) where (1-eps) t z + eps/C z would be 0 * -inf = nan
        t = probs.to(acc)
        if eps > 0.0:
            t = t * (1.0 - eps) + eps / num_classes
        wt = t * _class_vec(weight, t) if weight is not None else t  # w_c t'_ic
        a_soft = _row_sum(wt)
        b_soft = _row_sum(wt * z)

    if z is e:
        e.sub_(m).exp_()
    else:
        torch.sub(z, m, out=e).exp_()
    s = _row_sum(e)
    lse = m.squeeze(1) + s.log()

    # Per-sample loss.
    if index is not None:
        ce = lse - z_t
        if w_t is not None:
            ce = ce * w_t
        if eps > 0.0:
            ce = (1.0 - eps) * ce + (eps / num_classes) * (W * lse - wz)
        if zl:
            ce = ce + zl * lse * lse
        loss = torch.where(valid, ce, 0.0)
    else:
        loss = a_soft * lse - b_soft
        if zl:
            loss = loss + zl * lse * lse

    if grad is None:
        return loss, lse

    # Gradient: scale_i * (a_i * p_ic - b_ic); p = e / s.
    if index is not None:
        sv = valid.to(acc) * scale  # scale_i, 0 for ignored samples
        coef_t = (w_t * sv if w_t is not None else sv) * (1.0 - eps)  # (1-eps) w_t scale_i
        a = coef_t + (eps / num_classes) * W * sv if eps > 0.0 else coef_t
        if zl:
            a = a + (2.0 * zl) * lse * sv
        e.mul_(_col(a / s))
        e.scatter_add_(1, safe, -coef_t.unsqueeze(1))
    else:
        a = a_soft + (2.0 * zl) * lse if zl else a_soft
        e.mul_(_col(a * scale / s))
        coef = _col(scale)
        if isinstance(coef, torch.Tensor):
            e.addcmul_(wt, coef, value=-1.0)
        else:
            e.sub_(wt, alpha=coef)
    if eps > 0.0 and index is not None:  # the uniform part of the smoothed target: - eps/C w_c s_i
        u = _col(sv) * (eps / num_classes)
        e.sub_(u * _class_vec(weight, e) if weight is not None else u)
    if th is not None:
        e.mul_(th.mul_(th).neg_().add_(1.0))
    if e is not grad:
        grad.copy_(e)
    return loss, lse


def _take(buf: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype, device) -> torch.Tensor:
    """A view of a reusable flat buffer with the given shape (allocated if missing or too small)."""
    if buf is not None and buf.shape == shape and buf.dtype == dtype:
        return buf  # a ready view (e.g. transposed like the chunk it works on)
    n = 1
    for s in shape:
        n *= s
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        return torch.empty(shape, dtype=dtype, device=device)
    return buf[:n].view(shape)


def ce_forward(
    x: torch.Tensor,
    target: ChunkTarget,
    weight: torch.Tensor | None,
    opts: LossOptions,
    *,
    grad: torch.Tensor | None,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """Run ce_chunk over all chunks of x (N, C) or (N, C, D); return per-sample losses (N[, D])."""
    acc = compute_dtype(x.dtype)
    w = weight.to(acc) if weight is not None else None
    w_sum = deterministic_sum(w) if w is not None else None
    per_sample = x.shape[:1] + x.shape[2:]
    losses = torch.empty(per_sample, dtype=acc, device=x.device)
    need_work = x.dtype != acc or grad is None or grad.dtype != acc
    size = min(chunk_elements(x.device), x.numel()) + x.shape[1]
    work = torch.empty(size, dtype=acc, device=x.device) if need_work else None
    tanh_work = (
        torch.empty(size, dtype=acc, device=x.device)
        if opts.softcap is not None else None
    )
    per_sample_scale = isinstance(scale, torch.Tensor) and scale.dim() > 0
    if target.index is not None and target.valid is None:
        target = hard_target_terms(x, target.index, w, opts, acc)
    for idx in _chunks(x):
        sample_idx = _sample_index(idx)
        loss, _ = ce_chunk(
            x[idx],
            target.rows(idx),
            w,
            w_sum,
            opts,
            grad=grad[idx] if grad is not None else None,
            scale=scale[sample_idx] if per_sample_scale else scale,
            work=work,
            tanh_work=tanh_work,
        )
        losses[sample_idx] = loss
    return losses
