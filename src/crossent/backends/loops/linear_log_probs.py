"""Fused per-token log-probabilities and entropy of a linear layer's output, without the logits.

Contract (`crossent.reference.linear_log_probs`; x: input (N, D), W: linear_weight (V, D), b:
linear_bias (V,), t: target (N,))::

    linear_log_probs(x, W, t, b) == log_probs(F.linear(x, W, b), t)     (and the entropy)

in value and in the gradients w.r.t. x, W and b of ANY combination of the two outputs (a
policy-gradient term on the log-probs plus an entropy bonus, a KL penalty, a masked entropy):
the math is backends/rows_log_probs.py's.

Why backward recomputes the logits. The gradient of sum_i g_i log p_i + h_i H_i w.r.t. the
logits is G_ic = g_i [c = t_i] - p_ic (g_i + h_i (log p_ic + H_i)), and g, h are only known in
backward (as the per-token grad_output of reduction='none' in linear.py). grad_W = G.T x sums
over tokens with those per-token weights, so no part of it can be formed in forward without
G's N x V values: the choice is storing the logits (N V elements: 16 GB at N=32768, V=128256 in
float32 -- the tensor this module exists to avoid) or computing them again. So:

    forward   per chunk of n tokens: Z = x_c W.T (+ b) [n, V] -> log p_t, H and the row
              statistics m, log s (the softmax's): 2 N D V FLOPs; kept: 3 numbers per token
    backward  per chunk: Z again, then G in place from the stored statistics (one elementwise
              pass: no max or sum over V again), grad_x[c] = G W, grad_W += G.T x_c, grad_b +=
              sum G: 6 N D V FLOPs

8 N D V FLOPs in all (the 6 N D V of a scalar loss's fused path plus the second Z), ~3 N V
elementwise passes forward and ~4 backward. Storing the statistics costs 3 N floats and saves
backward the two reductions over V per row (its max and sum); the entropy's gradient needs H,
which is one of them. A gradient nobody asked for costs nothing: without a grad for the entropy
(logged, or used as a mask) G drops its h term and its buffer; without any gradient (a
reference model, evaluation) only the forward runs: 2 N D V.

Memory beyond the inputs and the returned gradients (N D + V D + V): one chunk's logits (n V in
the input dtype) and the row kernel's buffers beside them (`LogProbKernels.buffers`: on the CPU a
float32 work buffer for 16-bit logits, one for the entropy's exp, one for a softcap's tanh); the
backend picks n (`LogProbKernels.linear_rows`, ``chunk_size`` overrides it): never O(N V).
Saved for backward: the input (N D), the weight and bias (the caller's) and 3 N statistics.

Precision: products in the input dtype (as F.linear); the softmax math in float32 (float64 for
float64 inputs); grad_W and grad_b accumulate in float32 across chunks. Deterministic for a given
chunk size (the chunk size orders grad_W's sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import LossOptions
from .. import autograd, composite, rows, rows_log_probs
from ..common import compute_dtype
from .kernels import RowKernels
from .linear import _grad_buffers
from .linear_chunks import Chunk, chunk_gradients
from .log_probs import weighted_outputs


@dataclass(frozen=True)
class LinearLogProbsCall:
    """One call: everything but its tensors. rows: tokens per chunk. `LinearLogProbsFn`'s strategy
    for one device: the statistics over the whole vocabulary (this module's passes)."""

    opts: LossOptions
    entropy: bool
    rows: int
    kernels: RowKernels
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)

    # (the module's functions of the same names)
    def forward_pass(self, x, weight, bias, index):
        return forward_pass(x, weight, bias, index, self)

    def backward_pass(self, x, weight, bias, index, stats, g, h, want):
        return backward_pass(x, weight, bias, index, self, stats, g, h, want)

    def second_derivative(self, x, weight, bias, index, g, h, want):
        return _second_derivative(x, weight, index, bias, self, g, h, want)


def _chunk(x, weight, call: LinearLogProbsCall, *, entropy: bool, want_w: bool) -> Chunk:
    """The reused logits buffer (in the backend's layout) and the log-prob kernels' buffers."""
    lpk = call.kernels.log_probs
    v, d = weight.shape
    make = lambda size: lpk.buffers(size, x.dtype, call.opts, entropy, x.device, scratch=True)
    return Chunk(min(call.rows, x.shape[0]), v, d, x, call.opts, call.kernels,
                 call.kernels.row_major_logits, want_w, buffers=make)


def _targets(index, call, v, acc):
    return rows.targets(index, None, None, call.opts, acc, num_classes=v)


def forward_pass(x, weight, bias, index, call: LinearLogProbsCall):
    """(log_probs (N,), entropy (N,) or None, stats (3, N): m, log s, H), compute dtype."""
    n, acc = x.shape[0], compute_dtype(x.dtype)
    tg = _targets(index, call, weight.shape[0], acc)
    stats = torch.zeros(3, n, dtype=acc, device=x.device)
    lp = torch.zeros(n, dtype=acc, device=x.device)
    if n:
        chunk = _chunk(x, weight, call, entropy=call.entropy, want_w=False)
        for i in range(0, n, call.rows):
            j = min(i + call.rows, n)
            z = chunk.logits(x[i:j], weight, bias)
            lp[i:j], h, stats[0, i:j], stats[1, i:j] = call.kernels.log_probs.forward(
                z, tg.rows(slice(i, j)), call.opts, entropy=call.entropy, buffers=chunk.buffers,
                x_is_scratch=True)
            if h is not None:
                stats[2, i:j] = h
    return lp, stats[2].clone() if call.entropy else None, stats


def backward_pass(x, weight, bias, index, call: LinearLogProbsCall, stats, g, h, want):
    """(grad_x, grad_W, grad_b) of sum_i g_i log_probs_i + h_i entropy_i (None where not
    wanted), in the parameters' dtypes."""
    n, acc = x.shape[0], compute_dtype(x.dtype)
    grads = _grad_buffers(x, weight, bias, want, acc)
    gx, gw, gb = grads
    if n == 0:
        for t in (gw, gb):
            if t is not None:
                t.zero_()
    else:
        tg = _targets(index, call, weight.shape[0], acc)
        g = rows_log_probs.upstream(g, tg, acc)
        h = rows_log_probs.upstream(h, tg, acc)
        chunk = _chunk(x, weight, call, entropy=h is not None, want_w=gw is not None)
        for i in range(0, n, call.rows):
            j = min(i + call.rows, n)
            cut = slice(i, j)
            z = chunk.logits(x[cut], weight, bias)
            call.kernels.log_probs.backward(
                z, tg.rows(cut), call.opts, stats[0, cut], stats[1, cut], stats[2, cut],
                None if g is None else g[cut], None if h is None else h[cut], grad=z, buffers=chunk.buffers)
            chunk_gradients(z, x[cut], weight, cut, grads, chunk, first=i == 0)
    gw = gw.to(weight.dtype) if gw is not None else None
    gb = gb.to(bias.dtype) if gb is not None else None
    return gx, gw, gb


class LinearLogProbsFn(torch.autograd.Function):
    """Forward: the outputs and 3 statistics per token; backward: the logits again and the three
    gradients from them (module docstring). ``call`` is the strategy that computes them:
    `LinearLogProbsCall` (one device) or the vocab-parallel call of crossent.distributed (each
    rank's statistics all-reduced, grad_x summed over the ranks), each with ``entropy``,
    ``handover`` and the methods

        forward_pass(x, W, b, index)                        -> (log_probs, entropy or None, stats)
        backward_pass(x, W, b, index, stats, g, h, want)    -> (grad_x, grad_W, grad_b)
        second_derivative(x, W, b, index, g, h, want)       -> the same, with a graph (or raises)

    (gradients None where ``want`` says so, in the parameters' dtypes)."""

    @staticmethod
    def forward(call, input, linear_weight, index, linear_bias):
        lp, ent, stats = call.forward_pass(input, linear_weight, linear_bias, index)
        call.handover.put(stats)
        return (lp, ent) if call.entropy else lp

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, linear_weight, index, linear_bias = inputs
        ctx.call = call
        ctx.set_materialize_grads(False)  # an output nobody differentiates costs nothing
        ctx.save_for_backward(input, linear_weight, index, linear_bias, call.handover.take())

    @staticmethod
    def backward(ctx, g, h=None):
        input, linear_weight, index, linear_bias, stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        want = (need[1], need[2], linear_bias is not None and need[4])
        if g is None and h is None:
            return None, None, None, None, None
        call = ctx.call
        if torch.is_grad_enabled():  # create_graph=True
            gx, gw, gb = call.second_derivative(input, linear_weight, linear_bias, index, g, h, want)
        else:
            gx, gw, gb = call.backward_pass(input, linear_weight, linear_bias, index, stats, g, h, want)
        return None, gx, gw, None, gb


def run(call, input, linear_weight, index, linear_bias):
    """log_probs [, entropy] of ``call``: through `LinearLogProbsFn` when a parameter needs a
    gradient, else the forward pass alone."""
    params = (input, linear_weight, linear_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params):
        return LinearLogProbsFn.apply(call, input, linear_weight, index, linear_bias)
    lp, ent, _ = call.forward_pass(input, linear_weight, linear_bias, index)
    return (lp, ent) if call.entropy else lp


def _second_derivative(input, linear_weight, index, linear_bias, call, g, h, want):
    """Gradients with a graph, through the composite formulas and the inputs' own history."""
    params = (input, linear_weight, linear_bias)
    wanted = [t for t, w in zip(params, want) if w]
    with torch.enable_grad():
        out = composite.linear_log_probs(input, linear_weight, index, linear_bias, call.opts, call.entropy)
        grads = iter(torch.autograd.grad(weighted_outputs(out, g, h), wanted, create_graph=True,
                                         allow_unused=True))
    result = []
    for t, w in zip(params, want):
        got = next(grads) if w else None
        result.append(torch.zeros_like(t) if w and got is None else got)
    return tuple(result)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool, *,
                     kernels: RowKernels):
    """Backend entry (checked arguments): input (N, D), linear_weight (V, D), target (N,) int64,
    linear_bias (V,) or None. Returns log_probs (N,) [, entropy (N,)] in the compute dtype."""
    n, d = input.shape
    rows_ = opts.chunk_size or kernels.log_probs.linear_rows(n, d, linear_weight.shape[0], input.dtype,
                                                             opts, entropy)
    return run(LinearLogProbsCall(opts, entropy, max(1, rows_), kernels), input, linear_weight, target,
               linear_bias)
