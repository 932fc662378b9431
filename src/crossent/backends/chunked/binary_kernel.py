"""The binary cross-entropy kernel in plain torch ops: loss and gradient of one chunk of rows in
one elementwise pass (the formulas: `backends/rows.py`, end)."""

from __future__ import annotations

import torch

from .. import rows
from ..common import compute_dtype, deterministic_sum
from . import kernel, workers


def _row_chunks(x: torch.Tensor):
    rows_ = max(1, kernel.chunk_elements(x.device) // max(x[0].numel(), 1)) if x.dim() and x.shape[0] else 1
    for i in range(0, x.shape[0] if x.dim() else 1, rows_):
        yield slice(i, i + rows_)


def _bce_chunk(x, y, w, pw, logits: bool, grad):
    """The chunk's per-element losses (compute dtype); its input gradient written into ``grad``
    (in place where grad is in the compute dtype and contiguous, else through a temporary). Only
    the input's gradient is computed: the target's (two more softplus) is the composite
    backend's, through autograd. Forward+backward of bce_with_logits at
    4096 x 2048 float32 (8 chunks, the Intel VM): 1.5-2.0x torch's time when the chunk also
    computed the target's gradient, copied the input's and took softplus through two negations;
    0.83x without (bench_shapes' `bce_with_logits (4096, 2048)`)."""
    acc = compute_dtype(x.dtype)
    x, y = x.to(acc), y.to(acc)
    # the input's gradient straight into ``grad`` (logits only: the probabilities' formula has no
    # in-place form here)
    direct = logits and grad is not None and grad.dtype == acc and grad.is_contiguous()
    with torch.no_grad():  # (explicit gradients; the chunk never needs a graph)
        if logits:
            pwa = pw.to(acc) if pw is not None else None
            loss = rows.bce_with_logits(x, y, pwa)
            if grad is not None:
                d = rows.bce_with_logits_input_grad(x, y, pwa, out=grad if direct else None)
        else:
            loss = rows.bce(x, y)[0]
            if grad is not None:
                d = rows.bce_input_grad(x, y)
        if w is not None:
            wa = w.to(acc)
            loss.mul_(wa)
            if grad is not None:
                d.mul_(wa)
    if grad is not None and not direct:
        grad.copy_(d)
    return loss


def bce_forward(x, y, w, pw, logits, opts, grad):
    """Per-element losses (compute dtype) for 'none', else the deterministic total; the chunks
    spread over single-threaded workers (`workers.map_chunks`)."""
    acc = compute_dtype(x.dtype)
    if x.dim() == 0:
        loss = _bce_chunk(x, y, w, pw, logits, grad)
        return loss if opts.reduction == "none" else loss.sum()
    wb = w.expand(x.shape) if w is not None else None
    pwb = pw.expand(x.shape) if pw is not None else None
    out = torch.empty(x.shape, dtype=acc, device=x.device) if opts.reduction == "none" else None

    def one_chunk(r, _scratch):
        loss = _bce_chunk(
            x[r], y[r], wb[r] if wb is not None else None, pwb[r] if pwb is not None else None,
            logits, grad[r] if grad is not None else None,
        )
        if out is None:
            return deterministic_sum(loss)
        out[r] = loss
        return None

    partial = workers.map_chunks(one_chunk, list(_row_chunks(x)), x.device)
    if out is not None:
        return out
    return deterministic_sum(torch.stack(partial)) if partial else torch.zeros((), dtype=acc, device=x.device)
