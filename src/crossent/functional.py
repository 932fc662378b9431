"""The public functional API: torch.nn.functional's signatures, crossent's kernels.

Each function resolves torch's deprecated ``size_average``/``reduce`` into ``reduction`` (with
torch's warning), checks its arguments (`_checks`), packs the options, and calls the backend
function that `_dispatch` returns. Nothing below this module sees the legacy arguments.

Small CPU calls first try torch's own kernel on the raw arguments (`_dispatch`'s rule 2, before
the checks, for speed); if torch refuses the arguments (one of `torch_kernels.BAD_INPUT`), the
checks run and name the problem, or accept what torch refuses (int32 class indices) and dispatch
again. Errors that say nothing about the arguments (out of memory, a device error, a bug)
propagate.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from . import _autocast, _checks, _dispatch
from .backends import torch_kernels as _torch

# torch's refusals of bad arguments, and the errors among them that say nothing about arguments.
_BAD_INPUT, _NOT_BAD_INPUT = _torch.BAD_INPUT, _torch.NOT_BAD_INPUT

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "nll_loss",
]

_WEIGHTED_MEAN = """\
    'mean' with class weights w divides by the summed weights of the counted targets,
    ``sum_i w[t_i] l_i / sum_i w[t_i]`` (ignored targets count in neither sum), exactly as torch
    does; without weights it is the mean over counted targets. All targets ignored gives nan."""

_LEGACY = """\
    size_average, reduce: deprecated, as in torch; when either is given it overrides ``reduction``
    (with torch's warning)."""

_DTYPE = """\
    dtype: None (default) returns the loss in the input's dtype, as torch does; torch.float32 with
        a float16/bfloat16 input returns the float32 loss of ``input.float()`` -- the loss
        transformers computes for 16-bit logits -- without that float32 copy (the math runs in
        float32 anyway; 16-bit rounding of the loss is skipped). The gradient keeps the input's
        dtype. Any other value raises."""

_DETERMINISM = """\
    Results are deterministic: the same inputs on the same device give bitwise-identical loss and
    gradients, run after run and for any number of threads (torch.func and torch.compile, which
    run the composite formulas, are deterministic for a fixed thread count).

    Autograd: everything torch's loss supports. torch.func (grad, vjp, jacrev, vmap) and
    torch.compile (fullgraph=True) trace crossent's formulas as plain torch ops. Under
    torch.autocast the loss is torch's: float32 from 16-bit inputs (computed without a float32 copy
    of them). On the fused path the gradient is computed in forward and handed over in backward;
    a second backward (retain_graph=True) computes it again with the same kernel (the same bits),
    and a second derivative (create_graph=True: MAML, Hessian-vector products, gradient
    penalties) recomputes the gradient through the composite formulas, with a graph. Both need the
    loss's inputs as they were in forward; crossent holds them weakly -- keeping the logits alive
    until backward would cost the memory the fused path saves -- so keep a reference to them
    (``logits = model(x); loss = f(logits, ...)``, as most training loops do). If they were freed
    or modified in place (``inplace_backward=True``), backward raises a RuntimeError naming the
    remedy, never a wrong number."""


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """torch.nn._reduction.legacy_get_string, with torch's warning text."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    resolved = "mean" if (size_average and reduce) else "sum" if reduce else "none"
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{resolved}' instead.",
        stacklevel=3,
    )
    return resolved


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if _dispatch.cross_entropy_to_torch(input, label_smoothing, z_loss, softcap, inplace_backward, dtype):
        try:
            return _torch.cross_entropy_unchecked(
                input, target, weight, ignore_index, reduction, label_smoothing, dtype
            )
        except _BAD_INPUT as err:
            if isinstance(err, _NOT_BAD_INPUT):
                raise
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input) and isinstance(target, torch.Tensor):
        target, weight, dtype = _autocast.cross_entropy_args(input, target, weight, dtype)
        with _autocast.off(input.device.type):
            return cross_entropy(
                input, target, weight, ignore_index=ignore_index, reduction=reduction,
                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                inplace_backward=inplace_backward, dtype=dtype,
            )
    fn = "cross_entropy"
    input = _checks.logits_input(fn, input)
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    dtype = _checks.loss_dtype(fn, dtype, input)
    weight = _checks.class_weight(fn, weight, input, num_classes, dtype=dtype)
    soft = _checks.is_prob_target(input, target)
    if soft:
        _checks.prob_targets(fn, input, target, ignore_index)
    else:
        target = _checks.class_targets(
            fn, input, target, class_dim_size=num_classes, ignore_index=ignore_index
        )
    opts = _checks.loss_options(
        fn,
        ignore_index=ignore_index,
        reduction_=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        inplace_backward=inplace_backward,
        soft=soft,
        dtype=dtype,
    )
    if inplace_backward:
        _checks.inplace_input(fn, input)
    return _dispatch.cross_entropy(input, target, weight, opts)(input, target, weight, opts)


cross_entropy.__doc__ = f"""Cross-entropy between logits and targets; torch.nn.functional.cross_entropy, exactly.

    input: logits (C,), (N, C) or (N, C, d1, ..., dk); float64/32/16 or bfloat16 (16-bit inputs
    compute in float32 and return their own dtype).
    target: class indices (), (N,) or (N, d1, ..., dk), int64 (uint8 and other integer dtypes are
    accepted), each in [0, C) or equal to ignore_index; or class probabilities of the input's shape.

    Per sample, with p = softmax(z) over the class dim and class weights w (1 without):
        indices:        l = (1 - eps) w[t] (-log p[t]) + eps/C sum_c w[c] (-log p[c])
        probabilities:  l = -sum_c w[c] ((1 - eps) t[c] + eps/C) log p[c]
    where eps = label_smoothing. reduction: 'none' (per sample), 'sum', or 'mean'.
{_WEIGHTED_MEAN}
    With probability targets 'mean' divides by the number of samples N*d1*...*dk, as torch does.
{_LEGACY}

    Extensions (keyword-only):
    z_loss: adds ``z_loss * logsumexp(z)**2`` to every counted sample's loss before reduction
        (PaLM's auxiliary loss); 'mean' keeps the denominator above.
    softcap: the logits become ``z = softcap * tanh(input / softcap)`` before everything else
        (Gemma 2); the gradient includes the tanh's derivative.
    inplace_backward: when a gradient is needed, write it into ``input``'s storage, so forward plus
        backward needs no memory beyond the logits; ``input`` is destroyed (its version counter is
        bumped, so autograd refuses any other use of the old values). Without it the caller's
        tensors are never modified.
{_DTYPE}

{_DETERMINISM}
    Equivalent to ``crossent.reference.cross_entropy`` (the formulas, in float64).
    """


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if _dispatch.nll_loss_to_torch(input):
        try:
            return _torch.nll_loss_unchecked(input, target, weight, ignore_index, reduction)
        except _BAD_INPUT as err:
            if isinstance(err, _NOT_BAD_INPUT):
                raise
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input):
        with _autocast.off(input.device.type):
            return nll_loss(_autocast.fp32(input), target, _autocast.fp32(weight),
                            ignore_index=ignore_index, reduction=reduction)
    fn = "nll_loss"
    input = _checks.logits_input(fn, input)
    opts = _checks.loss_options(fn, ignore_index=ignore_index, reduction_=reduction)
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    weight = _checks.class_weight(fn, weight, input, num_classes)
    target = _checks.class_targets(fn, input, target, class_dim_size=num_classes, ignore_index=ignore_index)
    return _dispatch.nll_loss(input, target, weight, opts)(input, target, weight, opts)


nll_loss.__doc__ = f"""Negative log-likelihood of log-probabilities; torch.nn.functional.nll_loss, exactly.

    input: log-probabilities (C,), (N, C) or (N, C, d1, ..., dk); target: class indices as in
    cross_entropy. Per sample l = -w[t] input[t]; ignored targets give 0.
{_WEIGHTED_MEAN}
{_LEGACY}
{_DETERMINISM}
    """


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if _dispatch.binary_to_torch(input):
        try:
            return _torch.binary_cross_entropy_unchecked(input, target, weight, reduction)
        except _BAD_INPUT as err:
            if isinstance(err, _NOT_BAD_INPUT):
                raise
    fn = "binary_cross_entropy"
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input):
        input, target, weight = _autocast.binary_args(fn, input, target, weight)
        with _autocast.off(input.device.type):
            return binary_cross_entropy(input, target, weight, reduction=reduction)
    input, target = _checks.binary_pair(fn, input, target)
    opts = _checks.loss_options(fn, reduction_=reduction)
    weight = _checks.broadcast_weight(fn, "weight", weight, input)
    _checks.probabilities_in_unit_interval(fn, input)
    _checks.probabilities_in_unit_interval(fn, target, "target")
    return _dispatch.binary_cross_entropy(input, target, weight, opts)(input, target, weight, opts)


binary_cross_entropy.__doc__ = f"""Binary cross-entropy of probabilities; torch.nn.functional.binary_cross_entropy, exactly.

    input: probabilities in [0, 1] (checked); target: the same shape, labels or probabilities.
    Per element l = -w (y log p + (1 - y) log(1 - p)), each log clamped at -100 as in torch, so
    p = 0 or 1 gives a finite loss. weight broadcasts to the input. 'mean' averages all elements.
{_LEGACY}
{_DETERMINISM}
    """


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    if _dispatch.binary_to_torch(input):
        try:
            return _torch.binary_cross_entropy_with_logits_unchecked(
                input, target, weight, reduction, pos_weight
            )
        except _BAD_INPUT as err:
            if isinstance(err, _NOT_BAD_INPUT):
                raise
    fn = "binary_cross_entropy_with_logits"
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input):
        input, target, weight, pos_weight = _autocast.binary_args(fn, input, target, weight, pos_weight)
        with _autocast.off(input.device.type):
            return binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                                    pos_weight=pos_weight)
    input, target = _checks.binary_pair(fn, input, target)
    opts = _checks.loss_options(fn, reduction_=reduction)
    weight = _checks.broadcast_weight(fn, "weight", weight, input)
    pos_weight = _checks.broadcast_weight(fn, "pos_weight", pos_weight, input)
    loss_fn = _dispatch.binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts)
    return loss_fn(input, target, weight, pos_weight, opts)


binary_cross_entropy_with_logits.__doc__ = f"""Binary cross-entropy of logits; torch.nn.functional.binary_cross_entropy_with_logits, exactly.

    input: logits x; target: the same shape. With pos_weight pw (broadcast over the last dimension,
    one entry per class) and weight w (broadcast to the input), per element
        l = -w (pw y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))
          =  w ((1 - y) x + (1 + (pw - 1) y) softplus(-x)),
    computed without overflow for any x. 'mean' averages all elements. One fused pass computes the
    loss and its gradient.
{_LEGACY}
{_DETERMINISM}
    """


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: object | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    extensions = (
        options is not None or z_loss or softcap is not None or normalizer is not None
        or chunk_size is not None or dtype is not None
    )
    if _dispatch.linear_to_torch(
        input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing, extensions
    ):
        try:
            return _torch.linear_cross_entropy_unchecked(
                input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                label_smoothing,
            )
        except _BAD_INPUT as err:
            if isinstance(err, _NOT_BAD_INPUT):
                raise
    reduction = _checks.deprecated_reduction(reduction)
    if _autocast.active(input):
        input, linear_weight, linear_bias, weight, dtype = _autocast.linear_args(
            input, linear_weight, linear_bias, weight, dtype
        )
        with _autocast.off(input.device.type):
            return linear_cross_entropy(
                input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                options=options, z_loss=z_loss, softcap=softcap, normalizer=normalizer,
                chunk_size=chunk_size, dtype=dtype,
            )
    fn = "linear_cross_entropy"
    _checks.linear_operands(fn, input, linear_weight, linear_bias)
    target, soft, ignore_index = _checks.linear_targets(fn, input, linear_weight, target, ignore_index)
    dtype = _checks.loss_dtype(fn, dtype, input)
    weight = _checks.class_weight(fn, weight, input, linear_weight.shape[0], dtype=dtype)
    opts = _checks.loss_options(
        fn,
        ignore_index=ignore_index,
        reduction_=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        normalizer=normalizer,
        soft=soft,
        dtype=dtype,
    )
    unbatched = input.dim() == 1
    rows, retain = _checks.linear_chunking(
        fn, opts.reduction, opts.normalizer, chunk_size, options,
        1 if unbatched else input.shape[0], input.shape[-1], linear_weight.shape[0],
    )
    if rows is not None or retain:
        opts = dataclasses.replace(opts, chunk_size=rows, allow_retain_graph=retain)
    if unbatched:  # (D,) -> (1, D); the loss of 'none' comes back as a scalar, as torch's
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    loss = _dispatch.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts)(
        input, linear_weight, target, linear_bias, weight, opts
    )
    return loss.squeeze(0) if unbatched and opts.reduction == "none" else loss


linear_cross_entropy.__doc__ = f"""Cross-entropy of a linear layer's output, without materialising the logits;
    torch.nn.functional.linear_cross_entropy (torch 2.13), exactly, on any torch >= 2.4.

    input: (N, D) or (D,) hidden states, float64/32/16 or bfloat16. linear_weight: (C, D), or
    (C, d1, ..., dk, D) for a K-dimensional loss (torch's ``out_features``; batched input only).
    linear_bias: None, or (C,) / (C, d1, ..., dk). All three of one dtype and device (as for
    F.linear). target: class indices of shape (N,) / () / (N, d1, ..., dk) (int64; other integer
    dtypes converted), each in [0, C) or ignore_index; or class probabilities of the logits' shape
    (N, C, d1, ..., dk) / (C,) -- torch's rule: probabilities exactly when the shapes are equal.
    weight: (C,) class weights. ignore_index: None means -100 for class indices; with
    probabilities it must stay None (torch raises otherwise, and so does crossent).

    Equivalent to (value, and gradients w.r.t. input, linear_weight and linear_bias)::

        logits = F.linear(input, linear_weight.reshape(-1, D), linear_bias.reshape(-1))  # never built
        logits = logits.reshape(*input.shape[:-1], C, d1, ..., dk)
        loss = crossent.cross_entropy(logits, target, weight,
                                      ignore_index=-100 if ignore_index is None else ignore_index,
                                      reduction=reduction if normalizer is None else "sum",
                                      label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        if normalizer is not None: loss = loss / normalizer

    (``crossent.reference.linear_cross_entropy`` is this contract, executable, in float64.)
    Per-token losses, class weights, smoothing, z_loss and softcap as in crossent.cross_entropy.
{_WEIGHTED_MEAN}

    options: torch's ``LinearCrossEntropyOptions`` (or None), accepted on every torch version.
        Unlike torch, ``options=None`` does not mean "materialise the logits": crossent never
        does beyond one chunk, except for small CPU problems (N * C <= 1M logits), where the
        composition F.linear + cross_entropy is faster (see crossent._dispatch). Its fields:
        batch_chunk_size / chunking_method: the rows per chunk, as torch computes them
            ("auto" with no batch_chunk_size: crossent's own measured rule, below; None: one
            chunk of batch_chunk_size rows, or all rows; "aspect_ratio[:k]": torch's formula);
        allow_retain_graph: honoured -- the gradients computed in forward are kept, so a second
            backward through the loss reuses them (one gradient-sized copy); without it a second
            backward recomputes them (the same bits), as 'none' always does;
        acc_policy, acc_dtype: accepted, no effect: crossent always runs the softmax and
            accumulates the weight and bias gradients in float32 (float64 for float64 inputs),
            at least as precise as torch's "accurate" policy.
        Every option combination takes the fused path (torch falls back to materialising the
        logits for K-dim, label smoothing or non-int64 targets; crossent does not).

    Extensions (keyword-only):
    z_loss, softcap: as in crossent.cross_entropy.
    normalizer (reduction='mean' only; a number or a one-element tensor): the summed loss is
        divided by it instead of by the count (or summed weights) of counted tokens, for gradient
        accumulation across micro-batches (transformers' ``num_items_in_batch``).
    chunk_size: tokens per chunk; by default chosen from N, D, C, the dtype and the options so that
        one chunk's buffers take at most 7/8 of the bytes of the float32 weight gradient (7D/8
        rows in float32; at least 16 MiB; see backends/chunked/linear.py).
{_DTYPE}

    Memory: O(chunk_size * C) beyond the inputs and their gradients, never O(N * C).
    FLOPs: 6 N D C P for reduction 'mean'/'sum' (the three products any exact method needs;
    P = d1*...*dk); 8 N D C P for 'none' (backward recomputes the logits, since the per-token
    grad_output is known only then); 2 N D C P when no gradient is needed.
    16-bit inputs: products in the input dtype, softmax math and the accumulation of the weight
    and bias gradients in float32; gradients come back in the inputs' dtypes.
    Gradients w.r.t. the class weight or probability targets are not computed by the fused path
    (it raises if they are required); ``crossent.use_backend("reference")`` computes the contract
    above literally in float64 and gives them.
    Results are deterministic run to run for a given chunk size.
    Autograd as for crossent.cross_entropy: repeated backward, second derivatives (recomputed
    through the composite formulas from input, linear_weight and linear_bias, which the loss holds
    -- (N, D) + (V, D), as F.linear's backward would -- building the N x C logits only then),
    torch.func, torch.compile, autocast (the product in the autocast dtype, the loss in float32,
    as torch).
    """
