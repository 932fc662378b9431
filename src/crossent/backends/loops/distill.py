"""Fused linear distillation: the student's loss against a teacher without either model's logits
beyond one chunk (the contracts: `crossent.reference.linear_distillation_loss` and
`linear_topk_distillation_loss`; the row math: backends/divergence.py).

Per chunk of n tokens (shapes in brackets)::

    Z_s = x_c W^T (+ b)                 [n, V]  into a buffer reused by every chunk
    Z_t = x_t,c W_t^T (+ b_t)           [n, V]  dense teacher only (and only with soft_weight != 0)
    G   = d(sum_i s_i l_i)/dZ_s          [n, V]  the backend's distill_chunk / topk_chunk, over Z_s
    grad_x[c] = G W,  grad_W += G^T x_c,  grad_b += sum G      (linear_chunks.chunk_gradients)

so the memory beyond the inputs and the gradients is one chunk of each model's logits and the
row kernel's buffers (`RowKernels.distill_buffers`), never O(N V). FLOPs: 6 N D V for the student
(the same three products as the linear cross-entropy) + 2 N D_t V for the teacher; 'none' (its
per-token grad_output known only in backward) computes both models' logits again: 8 N D V +
4 N D_t V. The teacher is a constant: no gradient reaches its tensors, and nothing of it is kept
beyond the chunk (reduction 'none' keeps its inputs for backward, as it keeps the student's).

The autograd glue is linear.py's: for 'mean'/'sum' the gradients are finished in forward and
scaled in backward; a second backward refills them with the same kernel; a second derivative
recomputes them through the composite formulas (backends/composite_distill.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._options import DistillationOptions
from .. import autograd, composite_distill
from ..common import compute_dtype, reduce, safe_reciprocal
from .kernels import RowKernels
from .linear import _grad_buffers
from .linear_chunks import Chunk, run_chunks, scale_rows


def _no_buffers(size):
    """Chunk's buffers for the distillation loop: none (its kernels bring their own)."""
    return None


class DenseTeacher:
    """A teacher given by its hidden states and head: its logits are made chunk by chunk."""

    def __init__(self, teacher_input, teacher_linear_weight, teacher_linear_bias, target):
        self.x, self.w, self.b, self.target = teacher_input, teacher_linear_weight, teacher_linear_bias, target
        self.dtype = teacher_input.dtype
        self.buffer = None

    def counted(self, n, opts):
        return composite_distill.counted_rows(n, self.target, opts, self.x.device)

    def begin(self, rows, v, kernels, row_major, opts):
        if opts.soft_weight != 0.0:
            self.buffer = Chunk(rows, v, self.x.shape[1], self.x, None, kernels, row_major, False, buffers=_no_buffers)

    def losses(self, kernels, z, sl, counted, opts, **kw):
        alpha = alphas(kernels, opts)[1]
        zt = self.buffer.logits(self.x[sl], self.w, self.b, alpha) if self.buffer is not None else None
        target = self.target[sl] if self.target is not None else None
        return kernels.distill_chunk(z, zt, target, counted[sl], opts, **kw)


class TopkTeacher:
    """A teacher given by its top-k ids and log-probs (N, k)."""

    def __init__(self, teacher_ids, teacher_log_probs):
        self.ids, self.log_q = teacher_ids, teacher_log_probs
        self.dtype = teacher_log_probs.dtype

    def counted(self, n, opts):
        return composite_distill.topk_counted(self.ids, opts)

    def begin(self, rows, v, kernels, row_major, opts):
        pass

    def losses(self, kernels, z, sl, counted, opts, **kw):
        return kernels.topk_chunk(z, self.ids[sl], self.log_q[sl], opts, **kw)


def alphas(kernels: RowKernels, opts: DistillationOptions) -> tuple[float, float]:
    """(student, teacher) factors of the chunk logits inside their products (RowKernels.distill_alphas)."""
    return kernels.distill_alphas(opts) if kernels.distill_alphas is not None else (1.0, 1.0)


def distill_loop(x, weight, bias, teacher, opts: DistillationOptions, rows_, kernels: RowKernels, *,
                 scale, grads):
    """One pass over the token chunks (linear_chunks.run_chunks); per-token losses (N,) in the
    compute dtype. scale: a number, a 0-d tensor or (N,); grads as in linear_chunks.chunk_loop
    (written, not added)."""
    n, d = x.shape
    v = weight.shape[0]
    rows_ = max(1, min(rows_, n))
    row_major = kernels.row_major_logits
    chunk = Chunk(rows_, v, d, x, None, kernels, row_major, grads[1] is not None, buffers=_no_buffers)
    teacher.begin(rows_, v, kernels, row_major, opts)
    buffers = kernels.distill_buffers(rows_ * v, x.dtype, teacher.dtype, opts, x.device)
    counted = teacher.counted(n, opts)

    def step(z, sl, grad):
        return teacher.losses(kernels, z, sl, counted, opts, grad=grad, scale=scale_rows(scale, sl), buffers=buffers)

    return run_chunks(x, weight, bias, chunk, rows_, grads, step, alpha=alphas(kernels, opts)[0])


@dataclass(frozen=True)
class DistillCall:
    """One call of a fused distillation loss: everything but its tensors. teacher: the class
    that makes the teacher from the Function's trailing tensors; composite: the same loss
    through autograd (second derivatives)."""

    opts: DistillationOptions
    rows: int
    out_dtype: torch.dtype
    want: tuple
    kernels: RowKernels
    teacher: type
    composite: object
    handover: autograd.Handover = field(default_factory=autograd.Handover, compare=False)


def _precompute(x, w, b, teacher, call: DistillCall):
    """Forward's work for 'mean'/'sum': (losses, den, gradients, post_scale), as linear.py's."""
    opts, acc = call.opts, compute_dtype(x.dtype)
    den = composite_distill.denominator(teacher.counted(x.shape[0], opts), opts, acc)
    inv_den = safe_reciprocal(den) if den is not None else None
    fold = inv_den is not None and x.dtype != torch.float16
    grads = _grad_buffers(x, w, b, call.want, acc)
    losses = distill_loop(x, w, b, teacher, opts, call.rows, call.kernels,
                          scale=inv_den if fold else 1.0, grads=grads)
    return losses, den, grads, None if fold else inv_den


def _cast(grads, dtypes):
    gx, gw, gb = grads
    w_dtype, b_dtype = dtypes
    return gx, gw.to(w_dtype) if gw is not None else None, gb.to(b_dtype) if gb is not None else None


class _DistillFn(torch.autograd.Function):
    """Autograd glue (linear.py's scheme): forward(call, input, weight, bias, *teacher tensors)."""

    @staticmethod
    def forward(call, input, linear_weight, linear_bias, *teacher_tensors):
        teacher = call.teacher(*teacher_tensors)
        opts = call.opts
        if opts.reduction == "none":
            losses = distill_loop(input, linear_weight, linear_bias, teacher, opts, call.rows, call.kernels,
                                  scale=1.0, grads=(None, None, None))
            return losses.to(call.out_dtype)
        losses, den, grads, post_scale = _precompute(input, linear_weight, linear_bias, teacher, call)
        call.handover.put((grads, post_scale))
        return reduce(losses, den, opts, (), call.out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        call, input, linear_weight, linear_bias, *teacher_tensors = inputs
        ctx.call = call
        ctx.dtypes = (linear_weight.dtype, None if linear_bias is None else linear_bias.dtype)
        loss = lambda x, w, b: call.composite(x, w, b, *teacher_tensors)

        def regrad(x, w, b):
            return _precompute(x, w, b, call.teacher(*teacher_tensors), call)[2:]

        autograd.remember(ctx, "linear_distillation_loss", (input, linear_weight, linear_bias), loss, regrad,
                          weak=False)
        if call.opts.reduction == "none":
            ctx.save_for_backward(input, linear_weight, linear_bias, *teacher_tensors)
            ctx.grads = None
        else:
            grads, post_scale = call.handover.take()
            autograd.stash(ctx, grads, post_scale=post_scale, keep=False)

    @staticmethod
    def backward(ctx, grad_out):
        call = ctx.call
        n_teacher = len(ctx.needs_input_grad) - 4
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            gx, gw, gb = autograd.second_derivative(ctx, grad_out, call.want)
            return (None, gx, gw, gb) + (None,) * n_teacher
        if call.opts.reduction == "none":
            input, linear_weight, linear_bias, *teacher_tensors = ctx.saved_tensors
            grads = _grad_buffers(input, linear_weight, linear_bias, call.want, compute_dtype(input.dtype))
            distill_loop(input, linear_weight, linear_bias, call.teacher(*teacher_tensors), call.opts,
                         call.rows, call.kernels, scale=grad_out.to(compute_dtype(input.dtype)), grads=grads)
        else:
            grads = autograd.release(ctx, grad_out)
        return (None, *_cast(grads, ctx.dtypes)) + (None,) * n_teacher


def _run(input, linear_weight, linear_bias, teacher_tensors, teacher_cls, composite, opts, kernels, d_teacher,
         t_dtype):
    """Autograd Function when a gradient is wanted, else one loss-only pass."""
    n, v = input.shape[0], linear_weight.shape[0]
    rows = opts.chunk_size or kernels.distill_rows(n, input.shape[1], d_teacher, v, input.dtype, t_dtype, opts)
    want = tuple(t is not None and t.requires_grad for t in (input, linear_weight, linear_bias))
    out_dtype = composite_distill.out_dtype(input, opts)
    if torch.is_grad_enabled() and any(want):
        call = DistillCall(opts, rows, out_dtype, want, kernels, teacher_cls, composite)
        return _DistillFn.apply(call, input, linear_weight, linear_bias, *teacher_tensors)
    teacher = teacher_cls(*teacher_tensors)
    losses = distill_loop(input, linear_weight, linear_bias, teacher, opts, rows, kernels,
                          scale=1.0, grads=(None, None, None))
    den = composite_distill.denominator(teacher.counted(n, opts), opts, compute_dtype(input.dtype))
    return reduce(losses, den, opts, (n,), out_dtype)


def _detached(t):
    return t.detach() if t is not None else None


def linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
                             teacher_linear_bias, target, opts: DistillationOptions, *, kernels: RowKernels):
    """Backend entry (checked arguments): input (N, D), linear_weight (V, D), teacher_input
    (N, D_t), teacher_linear_weight (V, D_t), biases (V,) or None, target (N,) int64 or None."""
    tensors = (_detached(teacher_input), _detached(teacher_linear_weight), _detached(teacher_linear_bias), target)

    def composite(x, w, b, tx, tw, tb, t):
        return composite_distill.linear_distillation_loss(x, w, tx, tw, b, tb, t, opts)

    return _run(input, linear_weight, linear_bias, tensors, DenseTeacher, composite, opts, kernels,
                teacher_input.shape[1], teacher_input.dtype)


def linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs, linear_bias,
                                  opts: DistillationOptions, *, kernels: RowKernels):
    """Backend entry (checked arguments): teacher_ids (N, k) int64, teacher_log_probs (N, k)."""
    tensors = (teacher_ids, _detached(teacher_log_probs))

    def composite(x, w, b, ids, log_q):
        return composite_distill.linear_topk_distillation_loss(x, w, ids, log_q, b, opts)

    return _run(input, linear_weight, linear_bias, tensors, TopkTeacher, composite, opts, kernels, 0,
                teacher_log_probs.dtype)
