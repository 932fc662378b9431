"""The torch-op row kernels of per-token log-probabilities and entropy: the steps of
`backends/rows_log_probs.py` (which has the math) on one chunk of logits, in reused buffers.

forward   one read of the chunk: tempered logits -> r = z - m in the work buffer -> r_t (gather)
          -> e = exp(r) (in place, or into the exp buffer when the entropy needs r too) -> s, er
          -> log p_t, H and the statistics (m, log s) backward needs.
backward  one read of the chunk and one write of its gradient: log p = (z - m) - log s in the
          gradient buffer (or the float32 work buffer for 16-bit logits) -> g [c = t] - p (g +
          h (log p + H)), times the softcap's and the temperature's derivative.

Every row reduction runs over one row in a fixed order (`rows.row_sum`): results are bitwise
identical run to run and for any thread count.
"""

from __future__ import annotations

import torch

from ..._options import LossOptions
from .. import rows
from .. import rows_log_probs as lp_rows
from ..common import compute_dtype


def forward(x: torch.Tensor, tg: rows.Targets, opts: LossOptions, *, entropy: bool, work=None, exp=None,
            tanh=None, x_is_scratch: bool = False):
    """(log p_t, H or None, m, log s) of one chunk x (n, V), each (n,) in the compute dtype.

    work / exp / tanh: compute-dtype buffers shaped like x (work: unless x is scratch in the
    compute dtype; exp: with the entropy; tanh: under a softcap). x is read only, unless
    ``x_is_scratch`` (the caller needs it no more: it becomes r)."""
    acc = compute_dtype(x.dtype)
    if x_is_scratch and x.dtype == acc:
        work = x
    z, _ = lp_rows.tempered(x, opts, acc, out=work, tanh_out=tanh)
    m = z.amax(1, keepdim=True)
    r = rows.relative_(z, m, work)  # z - m
    r_t = lp_rows.target_relative(r, tg)
    if entropy:
        e = torch.exp(r, out=exp)
        s = rows.row_sum(e)
        er = lp_rows.entropy_sum_(e, r)
    else:
        s, er = rows.row_sum(r.exp_()), None
    log_s = s.log()
    lp, h = lp_rows.outputs(log_s, r_t, s, er, tg)
    return lp, h, m.squeeze(1), log_s


def backward(x: torch.Tensor, tg: rows.Targets, opts: LossOptions, m, log_s, entropy, g, h, *, grad,
             work=None, exp=None, tanh=None) -> torch.Tensor:
    """d(sum_i g_i log p_t + h_i H_i)/dx of one chunk x (n, V) into ``grad`` (like x, any float
    dtype; may be x itself). m, log_s, entropy (n,): the rows' statistics from `forward`; g, h
    (n,) with 0 on ignored rows, or None. work: a compute-dtype buffer like x (unless grad has
    the compute dtype); exp: like x, with h; tanh: under a softcap."""
    acc = compute_dtype(x.dtype)
    if grad.dtype == acc:
        work = grad
    z, th = lp_rows.tempered(x, opts, acc, out=work, tanh_out=tanh)
    logp = torch.sub(z, m.unsqueeze(1), out=work).sub_(log_s.unsqueeze(1))
    out = lp_rows.gradient_(logp, g, h, entropy, tg, opts, th=th, p_out=exp)
    if out is not grad:
        grad.copy_(out)
    return grad
