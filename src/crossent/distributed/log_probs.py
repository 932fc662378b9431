"""vocab_parallel_linear_log_probs: per-token log-probabilities and entropy of a vocabulary-parallel
output layer (each rank holds the rows [start, stop) of the (V, D) weight), without the logits.

Contract (x (*, D), W_r (V_r, D) and b_r this rank's rows of the full W and b)::

    vocab_parallel_linear_log_probs(x, W_r, t, linear_bias=b_r, group=g, ...)
        == crossent.linear_log_probs(x, cat_r(W_r), t, linear_bias=cat_r(b_r), ...)

in both outputs (on every rank) and in the gradients of any combination of them w.r.t. x (the
full gradient, after the all-reduce), W_r and b_r (this rank's rows of the full ones).

The row math is backends/rows_log_probs.py's, split over ranks as _stats.py splits the loss's:
with z the (softcapped, tempered) logits of this rank's classes, m_r its row max and r = z - m_r::

    partials  s_r = sum_{c in r} e^{r_c},  r_t (the owner's r of the target; 0 elsewhere),
              er_r = sum_{c in r} e^{r_c} r_c                                   (entropy only)
    combine   M = max_r m_r                                 all_reduce MAX  [N]
              rebased to M (shift d = m_r - M): s e^d, e^d (er + d s), r_t + d  (`rebase_entropy`)
              summed                                        all_reduce SUM  [2 or 3, N]
    outputs   log p_t = r_t - log s,   H = log s - er / s

Backward needs no collective for the statistics: each rank's G = d(sum g lp + h H)/dz on its own
classes is `rows_log_probs.gradient_` of log p_c = z_c - M - log s with the global (M, log s, H)
saved in forward (3 numbers per token), then grad_x = G W_r (a partial sum over this rank's
classes: one all_reduce SUM of N D, float32), grad_W_r += G^T x, grad_b_r += sum G. As in
loops/linear_log_probs.py, backward computes the logits again (g and h arrive only then):
2 N D V_r FLOPs forward, 6 N D V_r backward per rank; nothing N x V_r is kept, one chunk's
logits at a time (``chunk_size`` tokens; default: the single-device rule for V_r classes,
`backends.chunked.log_prob_rows`: at least 256 tokens while they fit in 256 MiB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import _autocast
from .._checks import distributed as _dchecks
from .._checks import log_probs as _checks
from .._options import LossOptions
from ..backends import rows, rows_log_probs
from ..backends.autograd import Handover
from ..backends.chunked import log_prob_kernel, log_prob_rows
from ..backends.common import compute_dtype
from ..backends.loops.linear_log_probs import run as run_linear_log_probs
from . import _comm, _head_products, _layout

_FN = "vocab_parallel_linear_log_probs"


def shard_partials(z: torch.Tensor, tg: rows.Targets, entropy: bool):
    """One chunk z (n, V_r) of tempered logits, compute dtype -> (m (n,), partials (k, n)):
    the local row max and [s, r_t(, er)], relative to m (to 0 for a row with no finite logit
    here: an empty shard, or every local logit -inf)."""
    n, v = z.shape
    parts = z.new_zeros(3 if entropy else 2, n)
    if v == 0:  # an empty shard: m = -inf, every partial 0
        return z.new_full((n,), float("-inf")), parts
    m = z.amax(1)
    r = z - torch.where(m == float("-inf"), 0.0, m).unsqueeze(1)
    e = torch.exp(r)
    parts[0] = rows.row_sum(e)
    parts[1] = rows_log_probs.target_relative(r, tg)
    if entropy:
        parts[2] = rows_log_probs.entropy_sum(e, r)
    return m, parts


def combine(m, parts, tg: rows.Targets, comm: _layout.Comm):
    """The two forward collectives -> (M, log s, log_probs, entropy or None), each (N,)."""
    m_all = _comm.all_reduce_max(m, comm.tp)
    ref = torch.where(m == float("-inf"), 0.0, m)
    shift = torch.where(m == float("-inf"), 0.0, ref - m_all)  # (-inf - M: no shift for an empty row)
    owned = tg.owned if tg.owned is not None else tg.valid
    parts[1] = parts[1] + torch.where(owned, shift, 0.0)
    if parts.shape[0] == 3:
        parts[0], parts[2] = rows_log_probs.rebase_entropy(parts[0], parts[2], shift)
    else:
        parts[0] = parts[0] * torch.exp(shift)
    parts = _comm.all_reduce_sum(parts, comm.tp, comm.deterministic)
    s = parts[0]
    log_s = torch.log(s)
    lp, ent = rows_log_probs.outputs(log_s, parts[1], s, parts[2] if parts.shape[0] == 3 else None, tg)
    return m_all, log_s, lp, ent


def forward_pass(x, w, b, tg: rows.Targets, call: _Call):
    """(log_probs, entropy or None, stats (3, N): M, log s, H) in the compute dtype."""
    n, acc = x.shape[0], compute_dtype(x.dtype)
    m = torch.empty(n, dtype=acc, device=x.device)
    parts = torch.empty(3 if call.entropy else 2, n, dtype=acc, device=x.device)
    for i in range(0, n, call.rows):
        j = min(i + call.rows, n)
        z, _ = rows_log_probs.tempered(_head_products.logits(x[i:j], w, b), call.opts, acc)
        m[i:j], parts[:, i:j] = shard_partials(z, tg.rows(slice(i, j)), call.entropy)
    m_all, log_s, lp, ent = combine(m, parts, tg, call.comm)
    stats = torch.stack([m_all, log_s, ent if ent is not None else torch.zeros_like(lp)])
    return lp, ent, stats


def backward_pass(x, w, b, tg: rows.Targets, call: _Call, stats, g, h, want):
    """This rank's (grad_x partial (N, D) compute dtype, grad_W_r, grad_b_r) of sum g lp + h H."""
    acc = compute_dtype(x.dtype)
    n = x.shape[0]
    gx, gw, gb = _head_products.zero_grads(x, w, want, acc)
    g, h = rows_log_probs.upstream(g, tg, acc), rows_log_probs.upstream(h, tg, acc)
    if w.shape[0] == 0:
        return gx, gw, gb
    for i in range(0, n, call.rows):
        j = min(i + call.rows, n)
        cut = slice(i, j)
        z = _head_products.logits(x[cut], w, b)
        grad = z if z.dtype == acc else torch.empty(z.shape, dtype=acc, device=z.device)
        log_prob_kernel.backward(z, tg.rows(cut), call.opts, stats[0, cut], stats[1, cut], stats[2, cut],
                                 None if g is None else g[cut], None if h is None else h[cut], grad=grad)
        _head_products.add_chunk_grads(grad, x, w, cut, (gx, gw, gb))
    return gx, gw, gb


@dataclass(frozen=True)
class _Call:
    """One call: everything but its tensors. rows: tokens per chunk."""

    vocab: _layout.Vocab
    opts: LossOptions
    comm: _layout.Comm
    entropy: bool
    rows: int
    handover: Handover = field(default_factory=Handover, compare=False)

    def targets(self, index, dtype) -> rows.Targets:
        return rows.targets(index, None, None, self.opts, compute_dtype(dtype),
                            num_classes=self.vocab.num_classes, classes=(self.vocab.start, self.vocab.stop))

    # `LinearLogProbsFn`'s strategy: forward, the partials and two all-reduces; backward, the local
    # gradients, then one all-reduce of grad_x. create_graph=True raises.
    def forward_pass(self, x, w, b, index):
        return forward_pass(x, w, b, self.targets(index, x.dtype), self)

    def backward_pass(self, x, w, b, index, stats, g, h, want):
        gx, gw, gb = backward_pass(x, w, b, self.targets(index, x.dtype), self, stats, g, h, want)
        if gx is not None:
            gx = _comm.all_reduce_sum(gx, self.comm.tp, self.comm.deterministic).to(x.dtype)
        gw = gw.to(w.dtype) if gw is not None else None
        gb = gb.to(b.dtype) if gb is not None else None
        return gx, gw, gb

    def second_derivative(self, *args):
        _dchecks.no_second_derivative(_FN)


def vocab_parallel_linear_log_probs(input, linear_weight, target, *, linear_bias=None, group=None,
                                    temperature=1.0, softcap=None, ignore_index=-100,
                                    return_entropy=False, chunk_size=None, vocab_range=None,
                                    num_classes=None, deterministic=False):
    fn = _FN
    if _dchecks.is_dtensor(linear_weight) or _dchecks.is_dtensor(linear_bias):  # a DTensor head
        from ._dtensor_head import unpack

        dt = unpack(fn, input, linear_weight, linear_bias, target, group, vocab_range, num_classes)
        out = vocab_parallel_linear_log_probs(
            dt.input, dt.weight, dt.target, linear_bias=dt.bias, group=dt.group, temperature=temperature,
            softcap=softcap, ignore_index=ignore_index, return_entropy=return_entropy, chunk_size=chunk_size,
            vocab_range=dt.vocab_range, num_classes=dt.num_classes, deterministic=deterministic)
        shape = input.shape[:-1]
        return tuple(dt.wrap(o, shape) for o in out) if return_entropy else dt.wrap(out, shape)
    _dchecks.plain_parameter(fn, "linear_weight", linear_weight)
    _dchecks.plain_parameter(fn, "linear_bias", linear_bias)
    _dchecks.plain_input(fn, input)
    comm = _layout.Comm(_dchecks.group(fn, group), (), _dchecks.deterministic(fn, deterministic))
    opts, entropy = _checks.options(fn, ignore_index=ignore_index, temperature=temperature, softcap=softcap,
                                    return_entropy=return_entropy, chunk_size=chunk_size)
    if _autocast.active(input):  # F.linear in the autocast dtype, the log-probs in float32
        input, linear_weight, linear_bias, _, _ = _autocast.linear_args(input, linear_weight, linear_bias,
                                                                        None, None)
    vocab = []  # resolved once the operands are checked (it may all-gather the shard sizes)

    def classes():
        vocab.append(_layout.resolve_vocab(fn, comm.tp, linear_weight.shape[0], vocab_range, num_classes, None))
        return vocab[0].num_classes

    with _autocast.maybe_off(input):
        input, target = _checks.linear(fn, input, linear_weight, linear_bias, target, opts.ignore_index,
                                       num_classes=classes)
        if _comm.size(comm.tp) == 1:  # one rank holds every class: the single-device call
            from .._dispatch import linear_log_probs as single
            from .._functional_log_probs import flat_call

            return flat_call(single, input, linear_weight, target, linear_bias, opts, entropy)
        shape = input.shape[:-1]
        x, index = input.reshape(-1, input.shape[-1]), target.reshape(-1)
        rows_ = opts.chunk_size or log_prob_rows(x.shape[0], x.shape[1], linear_weight.shape[0], x.dtype, opts,
                                                 extra_buffers=2 if entropy else 1)
        out = run_linear_log_probs(_Call(vocab[0], opts, comm, entropy, max(1, rows_)), x, linear_weight, index,
                                   linear_bias)
    if entropy:
        return out[0].view(shape), out[1].view(shape)
    return out.view(shape)


vocab_parallel_linear_log_probs.__doc__ = """Per-token log-probabilities (and entropy) of a
    vocabulary-parallel output layer, without its logits.

    Equivalent to ``crossent.linear_log_probs(input, cat(all ranks' linear_weight), target,
    linear_bias=cat(all ranks' linear_bias), ...)`` in both outputs (on every rank) and in the
    gradients of any combination of them w.r.t. ``input`` (the full gradient, after the
    all-reduce), ``linear_weight`` and ``linear_bias`` (this rank's rows).

    Args:
        input: (*, D) tokens, the same on every rank of ``group``.
        linear_weight: this rank's rows (V_r, D) of the output layer (V_r may be 0), or the
            whole layer as a DTensor sharded on its rows (Shard(0), as ColwiseParallel places
            lm_head.weight) by one mesh dim, Replicate on the others: then the group and the
            layout are the DTensor's, its ``.grad`` a DTensor placed alike, and a DTensor input
            (Replicate on that mesh dim) gives DTensor outputs placed as the input.
        target: (*) global class indices (or ignore_index), the same on every rank.
        linear_bias: this rank's (V_r,) bias rows.
        group: the vocab-parallel ProcessGroup or 1-D DeviceMesh (None: the default group).
        temperature, softcap, ignore_index, return_entropy, chunk_size: as in
            `crossent.linear_log_probs` (chunk_size: tokens per chunk).
        vocab_range: (start, stop) of this rank's classes; default: the ranks' shards in rank
            order (C from ``num_classes``, else one all_gather of the shard sizes).
        num_classes: the full vocabulary C (skips that all_gather; then the default layout is
            torch.chunk's ceil(C / W) per rank).
        deterministic: sum the statistics and grad_x in rank order (an all_gather each).

    Returns:
        log_probs (*) in float32 (float64 for float64 input), 0 on ignored tokens; with
        ``return_entropy=True`` also the entropy (*).

    Collectives per call over ``group`` (N tokens, 4 bytes per number, 8 for float64):
        forward   all_reduce MAX N x 4, all_reduce SUM 2N x 4 (3N x 4 with the entropy)
        backward  all_reduce SUM of grad_x, N D x 4 (none when input needs no gradient)
    FLOPs per rank: 2 N D V_r forward + 6 N D V_r backward. A group of one rank runs
    crossent.linear_log_probs itself. Second derivatives (create_graph=True) raise.
    """
