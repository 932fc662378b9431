"""The binary cross-entropy kernel in plain torch ops: loss and gradient of one chunk of rows in
one elementwise pass (the math is in binary.py's docstring).

torch's logsigmoid and sigmoid are single stable kernels (no overflow for any x); they are
elementwise math, not one of torch's losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as _torch_F

from ..common import compute_dtype, deterministic_sum
from . import kernel

# torch's EPSILON in binary_cross_entropy_backward is the float literal 1e-12f, i.e. this value.
_BCE_EPS = 9.999999960041972e-13


def _row_chunks(x: torch.Tensor):
    rows = max(1, kernel.chunk_elements(x.device) // max(x[0].numel(), 1)) if x.dim() and x.shape[0] else 1
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


def bce_forward(x, y, w, pw, logits, opts, grad):
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
