"""Fused cross-entropy in plain PyTorch: loss and gradient in one pass over chunks of samples.

Math (per sample i, class dim c, logits z = x, or softcap * tanh(x / softcap) with a softcap s)::

    lse_i   = log sum_c exp(z_ic)               p_ic = exp(z_ic - lse_i)
    hard    l_i = v_i * ( (1-eps) w_t (lse_i - z_it) + eps/C * (W lse_i - sum_c w_c z_ic) ) + v_i zl lse_i^2
    soft    l_i = A_i lse_i - sum_c w_c t'_ic z_ic + zl lse_i^2,   t' = (1-eps) t + eps/C,  A_i = sum_c w_c t'_ic
    dl_i/dz_ic = a_i p_ic - b_ic,  with
      hard  a_i = v_i ((1-eps) w_t + eps/C W + 2 zl lse_i),  b_ic = v_i ((1-eps) w_t [c = t] + eps/C w_c)
      soft  a_i = A_i + 2 zl lse_i,                        b_ic = w_c t'_ic
    dz/dx = 1 - (z / s)^2 under a softcap.

(w: class weights, 1 without; W = sum_c w_c; v_i = 0 for ignored samples, else 1; zl: z_loss.)

How: each chunk of ~1M elements (it stays in the L3 cache) goes through amax, exp (written straight
into the gradient tensor the call must return anyway, or into a reused float32 buffer for 16-bit
inputs), sum, one multiply by a_i / sum and one scatter of -b. So forward+backward reads the logits
once and writes the gradient once; no N x C temporary exists beside the gradient, and with
``inplace_backward`` not even that. When no gradient is needed the exp goes to a reused chunk buffer.

Determinism: every per-sample reduction runs over one row in a fixed order (a single-row chunk is
expanded to two rows so torch never splits it across threads), and totals go through
``deterministic_sum``. Results are bitwise identical run to run and for any thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as _torch_F

from .._options import LossOptions
from . import _memory

# ~1M elements (4 MB of float32) per chunk. Each chunk costs ~15 Python-level torch ops (~5 us each
# here), so small chunks drown in dispatch; measured at 4096 x 32000 (2 threads), forward+backward
# / forward-only in ms: 256K 221/146, 512K 191/122, 1M 174/113, 2M 166/116.
CHUNK_ELEMENTS = 1 << 20
# Below torch's grain size (at::internal::GRAIN_SIZE) a reduction runs on one thread.
SERIAL_REDUCTION = 32768
_BLOCK = 1024


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax math runs in float64 for float64 inputs and in float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(input: torch.Tensor, target: torch.Tensor, soft: bool, dtype: torch.dtype | None) -> torch.dtype:
    """The returned loss's dtype: torch's (the input's; with probability targets, the promotion of
    input and target), promoted to the caller's ``dtype=`` (float32 for 16-bit inputs) if given."""
    out = torch.result_type(input, target) if soft else input.dtype
    return out if dtype is None else torch.promote_types(out, dtype)


def deterministic_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum of all elements in an order that does not depend on the number of threads.

    torch splits a large full reduction across threads (the split depends on the thread count).
    Summing fixed blocks of 1024 as separate outputs (one thread each), recursively, fixes the order.
    """
    v = v.reshape(-1)
    while v.numel() > SERIAL_REDUCTION:
        pad = (-v.numel()) % _BLOCK
        if pad:
            v = torch.cat([v, v.new_zeros(pad)])
        v = v.view(-1, _BLOCK).sum(1)
    return v.sum()


def _row_sum(e: torch.Tensor) -> torch.Tensor:
    """Sum over the class dim (1), each sample by a single thread in a fixed order."""
    if e.shape[1] > SERIAL_REDUCTION and e.numel() == e.shape[1]:
        # A lone output would be split across threads: expanding to two rows keeps it on one.
        return e.expand(2, *e.shape[1:]).sum(1)[:1]
    return e.sum(1)


def _chunks(x: torch.Tensor):
    """Yield index tuples covering x (N, C, D) or (N, C) in chunks of ~CHUNK_ELEMENTS."""
    n, c = x.shape[0], x.shape[1]
    if x.dim() == 2:
        rows = max(1, CHUNK_ELEMENTS // max(c, 1))
        for i in range(0, n, rows):
            yield (slice(i, i + rows),)
        return
    d = x.shape[2]
    if c * d <= CHUNK_ELEMENTS:
        rows = max(1, CHUNK_ELEMENTS // max(c * d, 1))
        for i in range(0, n, rows):
            yield (slice(i, i + rows),)
    else:
        cols = max(1, CHUNK_ELEMENTS // max(c, 1))
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
        torch.div(x, cap, out=th).tanh_()
        z = torch.mul(th, cap, out=e)
    elif x.dtype != acc:
        z = e.copy_(x)
    else:
        z = x

    m = z.amax(1, keepdim=True)
    index, probs = target.index, target.probs
    if eps > 0.0:  # sum_c w_c z_c, needed for the smoothing term
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
        t = probs.to(acc)
        if weight is not None:
            wt = t * _class_vec(weight, t)
            a_soft = _row_sum(wt)
            b_soft = _row_sum(wt * z)
        else:
            wt = t
            a_soft = _row_sum(t)
            b_soft = _row_sum(t * z)
        if eps > 0.0:
            a_soft = (1.0 - eps) * a_soft + (eps / num_classes) * W
            b_soft = (1.0 - eps) * b_soft + (eps / num_classes) * wz

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
        coef = _col(scale) * (1.0 - eps)
        if isinstance(coef, torch.Tensor):
            e.addcmul_(wt, coef, value=-1.0)
        else:
            e.sub_(wt, alpha=coef)
        sv = scale
    if eps > 0.0:  # the uniform part of the smoothed target: - eps/C * w_c * scale_i
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
    work = torch.empty(CHUNK_ELEMENTS + x.shape[1], dtype=acc, device=x.device) if need_work else None
    tanh_work = (
        torch.empty(CHUNK_ELEMENTS + x.shape[1], dtype=acc, device=x.device)
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


# ----------------------------------------------------------------------------------------------
# Cross-entropy on logits: layout, reduction and the autograd Function.


def _as_nc(x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C); (N, C) stays; (N, C, d1..dk) -> (N, C, d1*..*dk) (a view where possible)."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.reshape(x.shape[0], x.shape[1], -1)


def _as_samples(t: torch.Tensor, x_nc: torch.Tensor) -> torch.Tensor:
    """Class-index targets () / (N,) / (N, d1..dk) -> (N[, D]) matching x_nc."""
    return t.reshape(x_nc.shape[:1] + x_nc.shape[2:])


def _mean_denominator(index, weight, opts, x_nc, acc) -> torch.Tensor:
    """torch's 'mean': sum of w[t_i] over counted samples (hard), or the number of samples (soft)."""
    if opts.normalizer is not None:
        return torch.tensor(opts.normalizer, dtype=acc, device=x_nc.device)
    if index is None:
        return torch.tensor(float(x_nc.numel() // max(x_nc.shape[1], 1)), dtype=acc, device=x_nc.device)
    valid = index != opts.ignore_index
    if weight is None:
        return valid.sum().to(acc)
    w_t = weight.to(acc)[torch.where(valid, index, 0)]
    return deterministic_sum(torch.where(valid, w_t, 0.0))


def _safe_reciprocal(den: torch.Tensor) -> torch.Tensor:
    """1/den, and 0 when den is 0 (all targets ignored): torch's gradient is then zero, not nan."""
    return torch.where(den != 0, 1.0 / den, 0.0)


def _reduce(losses, den, opts, out_shape, out_dtype):
    if opts.reduction == "none":
        return losses.reshape(out_shape).to(out_dtype)
    total = deterministic_sum(losses)
    if opts.reduction == "mean":
        total = total / den
    return total.to(out_dtype)


def _hand_over_gradient(ctx, fn: str) -> torch.Tensor:
    """The gradient computed in forward, handed to autograd once (keeping a copy for a second
    backward would cost a whole gradient's memory)."""
    g = ctx.grad
    if g is None:
        raise RuntimeError(
            f"crossent.{fn}: the fused gradient of this loss was already handed to a previous "
            "backward(); backward through the same loss twice (retain_graph=True) is not "
            "supported by the fused path: compute the loss again for a second backward"
        )
    ctx.grad = None  # the tensor now belongs to autograd
    return g


class _CrossEntropyFn(torch.autograd.Function):
    """Fused cross-entropy: the gradient is computed in forward and only scaled in backward.

    For float32/float64 inputs the forward already folds 1/den ('mean') into the gradient, so a
    backward with grad_output == 1 (the usual `loss.backward()`) hands it over untouched. For 16-bit
    inputs the gradient is stored unscaled (O(1) values) and scaled once in backward, so an AMP loss
    scale multiplies before anything can underflow in float16.
    """

    @staticmethod
    def forward(ctx, x, index, probs, weight, opts, out_shape, out_dtype):
        x_nc = _as_nc(x)
        acc = compute_dtype(x.dtype)
        den = _mean_denominator(index, weight, opts, x_nc, acc) if opts.reduction == "mean" else None
        fold = den is not None and x.dtype in (torch.float32, torch.float64)
        if opts.inplace_backward:
            grad = x_nc
        else:
            grad = _memory.empty(x_nc.shape, x.dtype, x.device)
        inv_den = _safe_reciprocal(den) if den is not None else None
        losses = ce_forward(
            x_nc, ChunkTarget(index, probs), weight, opts, grad=grad, scale=inv_den if fold else 1.0
        )
        if opts.inplace_backward:
            torch.autograd.graph.increment_version(x)  # anything else that saved x now fails loudly
        ctx.grad = grad
        ctx.x_shape = x.shape
        ctx.post_scale = None if fold or den is None else inv_den
        ctx.reduction = opts.reduction
        return _reduce(losses, den, opts, out_shape, out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        g = _hand_over_gradient(ctx, "cross_entropy")
        if ctx.reduction == "none":
            g.mul_(grad_out.reshape(g.shape[:1] + (1,) + g.shape[2:]).to(g.dtype))
        else:
            factor = grad_out if ctx.post_scale is None else grad_out * ctx.post_scale
            if factor.device.type != "cpu" or factor.item() != 1.0:
                g.mul_(factor.to(g.dtype))
        return g.view(ctx.x_shape), None, None, None, None, None, None


def cross_entropy(
    input, target, weight, opts: LossOptions, *, soft: bool, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Backend entry: checked arguments in, loss out (gradient only when autograd needs one).
    dtype: None, or float32 for a 16-bit input (the loss is then not rounded to 16 bits)."""
    x_nc = _as_nc(input)
    out_dtype = loss_dtype(input, target, soft, dtype)
    index = None if soft else _as_samples(target, x_nc)
    probs = _as_nc(target) if soft else None
    out_shape = (input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size([])) if soft else target.shape
    if torch.is_grad_enabled() and input.requires_grad:
        return _CrossEntropyFn.apply(input, index, probs, weight, opts, out_shape, out_dtype)
    # Evaluation: loss only, no gradient computed or kept.
    losses = ce_forward(x_nc, ChunkTarget(index, probs), weight, opts, grad=None, scale=1.0)
    acc = compute_dtype(input.dtype)
    den = _mean_denominator(index, weight, opts, x_nc, acc) if opts.reduction == "mean" else None
    return _reduce(losses, den, opts, out_shape, out_dtype)


# ----------------------------------------------------------------------------------------------
# Negative log-likelihood on log-probabilities: l_i = -w[t_i] x_i[t_i]; the gradient is sparse.


class _NLLFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, index, weight, opts, out_shape):
        x_nc = _as_nc(x)
        acc = compute_dtype(x.dtype)
        valid = index != opts.ignore_index
        safe = torch.where(valid, index, 0).unsqueeze(1)
        w_t = weight.to(acc)[safe.squeeze(1)] if weight is not None else torch.ones(index.shape, dtype=acc, device=x.device)
        w_t = torch.where(valid, w_t, 0.0)
        losses = -x_nc.gather(1, safe).squeeze(1).to(acc) * w_t
        den = deterministic_sum(w_t) if opts.reduction == "mean" else None
        ctx.save_for_backward(safe, w_t, den if den is not None else w_t.new_ones(()))
        ctx.meta = (x.shape, x_nc.shape, opts.reduction, x.dtype)
        return _reduce(losses, den, opts, out_shape, x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        safe, w_t, den = ctx.saved_tensors
        x_shape, nc_shape, reduction, dtype = ctx.meta
        if reduction == "none":
            coef = -w_t * grad_out.reshape(w_t.shape).to(w_t.dtype)
        else:
            coef = -w_t * (grad_out.to(w_t.dtype) * _safe_reciprocal(den))
        g = torch.zeros(nc_shape, dtype=dtype, device=safe.device)
        g.scatter_(1, safe, coef.unsqueeze(1).to(dtype))
        return g.view(x_shape), None, None, None, None


def nll_loss(input, target, weight, opts: LossOptions) -> torch.Tensor:
    x_nc = _as_nc(input)
    index = _as_samples(target, x_nc)
    return _NLLFn.apply(input, index, weight, opts, target.shape)


# ----------------------------------------------------------------------------------------------
# Binary cross-entropy, on probabilities and on logits: one elementwise pass per chunk of rows.
#
#   on probabilities   l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))
#                      dl/dp = w (p - y) / max(p (1-p), 1e-12)           (torch's clamps)
#   on logits          l = w ((1-y) x + k softplus(-x)),  k = 1 + (pw - 1) y
#                      dl/dx = w (k sigmoid(x) - pw y)
# torch's logsigmoid and sigmoid are single stable kernels (no overflow for any x); they are
# elementwise math, not one of torch's losses.

# torch's EPSILON in binary_cross_entropy_backward is the float literal 1e-12f, i.e. this value.
_BCE_EPS = 9.999999960041972e-13


def _row_chunks(x: torch.Tensor):
    rows = max(1, CHUNK_ELEMENTS // max(x[0].numel(), 1)) if x.dim() and x.shape[0] else 1
    for i in range(0, x.shape[0] if x.dim() else 1, rows):
        yield slice(i, i + rows)


def _bce_chunk(x, y, w, pw, logits: bool, grad):
    acc = compute_dtype(x.dtype)
    x = x.to(acc)
    y = y.to(acc)
    if logits:
        # softplus(-x) = -log sigmoid(x): one stable op, exact for any x (softplus itself turns
        # linear past 20 and loses ~1e-9 in float64).
        sp = _torch_F.logsigmoid(x).neg_()
        if pw is None:
            loss = torch.addcmul(sp, 1.0 - y, x)  # (1 - y) x + softplus(-x)
            if grad is not None:
                d = torch.sigmoid(x).sub_(y)
        else:
            pwa = pw.to(acc)
            k = torch.addcmul(torch.ones_like(y), pwa - 1.0, y)  # 1 + (pw - 1) y
            loss = torch.addcmul(sp.mul_(k), 1.0 - y, x)
            if grad is not None:
                d = torch.sigmoid(x).mul_(k).sub_(pwa * y)
    else:
        logp = torch.log(x).clamp_min_(-100.0)
        log1mp = torch.log1p(-x).clamp_min_(-100.0)
        loss = (y * logp).add_((1.0 - y).mul_(log1mp)).neg_()
        if grad is not None:
            d = (x - y).div_((x * (1.0 - x)).clamp_min_(_BCE_EPS))
    if w is not None:
        wa = w.to(acc)
        loss.mul_(wa)
        if grad is not None:
            d.mul_(wa)
    if grad is not None:
        grad.copy_(d)
    return loss


def _bce_forward(x, y, w, pw, logits, opts, grad):
    """Per-element losses (compute dtype) for 'none', else the deterministic total."""
    acc = compute_dtype(x.dtype)
    if x.dim() == 0:
        loss = _bce_chunk(x, y, w, pw, logits, grad)
        return loss if opts.reduction == "none" else loss.sum()
    wb = w.expand(x.shape) if w is not None else None
    pwb = pw.expand(x.shape) if pw is not None else None
    out = torch.empty(x.shape, dtype=acc, device=x.device) if opts.reduction == "none" else None
    partial = []
    for rows in _row_chunks(x):
        loss = _bce_chunk(
            x[rows], y[rows], wb[rows] if wb is not None else None,
            pwb[rows] if pwb is not None else None, logits, grad[rows] if grad is not None else None,
        )
        if out is not None:
            out[rows] = loss
        else:
            partial.append(deterministic_sum(loss))
    if out is not None:
        return out
    return deterministic_sum(torch.stack(partial)) if partial else torch.zeros((), dtype=acc, device=x.device)


def _bce_reduce(total, x, opts):
    if opts.reduction == "mean":
        total = total / x.numel() if x.numel() else total * float("nan")
    return total.to(x.dtype)


class _BCEFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, w, pw, logits, opts):
        grad = _memory.empty(x.shape, x.dtype, x.device)
        total = _bce_forward(x, y, w, pw, logits, opts, grad)
        ctx.grad = grad
        ctx.meta = (opts.reduction, x.numel())
        return _bce_reduce(total, x, opts)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        g = _hand_over_gradient(ctx, "binary_cross_entropy")
        reduction, n = ctx.meta
        if reduction == "none":
            g.mul_(grad_out.to(g.dtype))
        else:
            factor = grad_out / n if reduction == "mean" else grad_out
            g.mul_(factor.to(g.dtype))
        return g, None, None, None, None, None


def binary_cross_entropy(input, target, weight, pos_weight, opts: LossOptions, *, logits: bool):
    if torch.is_grad_enabled() and input.requires_grad:
        return _BCEFn.apply(input, target, weight, pos_weight, logits, opts)
    return _bce_reduce(_bce_forward(input, target, weight, pos_weight, logits, opts, None), input, opts)
