"""The public functional API: torch.nn.functional's signatures, crossent's kernels.

Each function resolves torch's deprecated ``size_average``/``reduce`` into ``reduction`` (with
torch's warning), checks its arguments (`_checks`), packs the options, and hands over to the backend
that `_dispatch` picks. Nothing below this module sees the legacy arguments.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as _torch_F

from . import _checks, _dispatch, reference
from ._dispatch import Backend, select
from .backends import torch_chunked, torch_chunked_linear

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
    gradients, run after run and for any number of threads."""


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


# torch's kernels behind torch.nn.functional, called directly on the torch route when no
# __torch_function__ override or mode is active (the same test F makes), to keep crossent's
# wrapper under a microsecond: at 64 x 10 forward-only, torch's whole call takes ~6 us.
_has_torch_function = torch.overrides.has_torch_function_variadic
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum
_ce_kernel = getattr(torch._C._nn, "cross_entropy_loss", None)
_HALF = (torch.float16, torch.bfloat16)
_Tensor = torch.Tensor
_nll_kernel = getattr(torch._C._nn, "nll_loss_nd", None)


def _torch_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing):
    if _ce_kernel is None or _has_torch_function(input, target, weight):
        return _torch_F.cross_entropy(
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )
    return _ce_kernel(input, target, weight, _REDUCTION_ENUM[reduction], ignore_index, label_smoothing)


def _torch_nll_loss(input, target, weight, ignore_index, reduction):
    if _nll_kernel is None or _has_torch_function(input, target, weight):
        return _torch_F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    return _nll_kernel(input, target, weight, _REDUCTION_ENUM[reduction], ignore_index)


def _serial(t: torch.Tensor) -> bool:
    """torch reduces fewer than its grain size (32768) of elements on one thread, in fixed order."""
    return t.numel() <= torch_chunked.SERIAL_REDUCTION


def _fixed_order_reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """'sum' or 'mean' of torch's unreduced losses, in a thread-independent order."""
    if reduction == "none":
        return losses
    if reduction not in ("mean", "sum"):
        raise ValueError(reduction)  # torch would have refused it; crossent's checks say why
    if _serial(losses):
        return losses.mean() if reduction == "mean" else losses.sum()
    total = torch_chunked.deterministic_sum(losses)
    return total / losses.numel() if reduction == "mean" else total


def _torch_binary(loss, input, reduction, *args, **kwargs):
    """A binary loss of torch's: its own reduction where that is serial, else a fixed-order one."""
    if _serial(input):
        return loss(input, *args, reduction=reduction, **kwargs)
    return _fixed_order_reduce(loss(input, *args, reduction="none", **kwargs), reduction)


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
    if (
        _dispatch.torch_first(input)
        and not (z_loss or inplace_backward)
        and softcap is None
        and 0.0 <= label_smoothing <= 1.0  # torch silently accepts negative and nan smoothing
        and (dtype is None or (dtype is torch.float32 and input.dtype in _HALF))
    ):
        # (small here: the float32 copy for dtype= costs less than the fused path)
        x = input if dtype is None else input.to(dtype)
        try:
            if target.is_floating_point() and reduction != "none" and not _serial(x):
                # torch's probability-target path ends in a full .sum() whose order depends on
                # the thread count: take its per-sample losses and reduce them in a fixed order.
                per_sample = _torch_cross_entropy(x, target, weight, ignore_index, "none", label_smoothing)
                return _fixed_order_reduce(per_sample, reduction)
            if _ce_kernel is not None and not _has_torch_function(x, target, weight):
                return _ce_kernel(  # _torch_cross_entropy, inlined: this line runs for every small call
                    x, target, weight, _REDUCTION_ENUM[reduction], ignore_index, label_smoothing
                )
            return _torch_cross_entropy(x, target, weight, ignore_index, reduction, label_smoothing)
        except Exception:  # noqa: BLE001 -- crossent's checks below name the problem (or handle it)
            pass
    fn = "cross_entropy"
    input = _checks.logits_input(fn, input)
    opts = _checks.loss_options(
        fn,
        ignore_index=ignore_index,
        reduction_=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        inplace_backward=inplace_backward,
    )
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    weight = _checks.class_weight(fn, weight, input, num_classes)
    soft = _checks.is_prob_target(input, target)
    if soft:
        _checks.prob_targets(fn, input, target, ignore_index)
    else:
        target = _checks.class_targets(
            fn, input, target, class_dim_size=num_classes, ignore_index=ignore_index
        )
    if inplace_backward:
        _checks.inplace_input(fn, input)
    dtype = _checks.loss_dtype(fn, dtype, input)
    if select(weight, target if soft else None) is Backend.REFERENCE:
        loss = reference.cross_entropy(
            input, target, weight, ignore_index, reduction, label_smoothing,
            z_loss=z_loss, softcap=softcap,
        )
        return loss.to(torch_chunked.loss_dtype(input, target, soft, dtype))
    return torch_chunked.cross_entropy(input, target, weight, opts, soft=soft, dtype=dtype)


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
    if _dispatch.torch_first(input):
        try:
            return _torch_nll_loss(input, target, weight, ignore_index, reduction)
        except Exception:  # noqa: BLE001 -- crossent's checks below name the problem
            pass
    fn = "nll_loss"
    input = _checks.logits_input(fn, input)
    opts = _checks.loss_options(fn, ignore_index=ignore_index, reduction_=reduction)
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    weight = _checks.class_weight(fn, weight, input, num_classes)
    target = _checks.class_targets(fn, input, target, class_dim_size=num_classes, ignore_index=ignore_index)
    if select(weight) is Backend.REFERENCE:
        return reference.nll_loss(input, target, weight, ignore_index, reduction).to(input.dtype)
    return torch_chunked.nll_loss(input, target, weight, opts)


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
    if _dispatch.torch_first(input, binary=True):
        try:
            return _torch_binary(_torch_F.binary_cross_entropy, input, reduction, target, weight)
        except Exception:  # noqa: BLE001 -- crossent's checks below name the problem
            pass
    fn = "binary_cross_entropy"
    input, target = _checks.binary_pair(fn, input, target)
    opts = _checks.loss_options(fn, reduction_=reduction)
    weight = _checks.broadcast_weight(fn, "weight", weight, input)
    _checks.probabilities_in_unit_interval(fn, input)
    if select(target, weight) is Backend.REFERENCE:
        return reference.binary_cross_entropy(input, target, weight, reduction).to(input.dtype)
    return torch_chunked.binary_cross_entropy(input, target, weight, None, opts, logits=False)


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
    if _dispatch.torch_first(input, binary=True):
        try:
            return _torch_binary(
                _torch_F.binary_cross_entropy_with_logits, input, reduction, target, weight,
                pos_weight=pos_weight,
            )
        except Exception:  # noqa: BLE001 -- crossent's checks below name the problem
            pass
    fn = "binary_cross_entropy_with_logits"
    input, target = _checks.binary_pair(fn, input, target)
    opts = _checks.loss_options(fn, reduction_=reduction)
    weight = _checks.broadcast_weight(fn, "weight", weight, input)
    pos_weight = _checks.broadcast_weight(fn, "pos_weight", pos_weight, input)
    if select(target, weight, pos_weight) is Backend.REFERENCE:
        loss = reference.binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight)
        return loss.to(input.dtype)
    return torch_chunked.binary_cross_entropy(input, target, weight, pos_weight, opts, logits=True)


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
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    if (
        normalizer is None
        and chunk_size is None
        and dtype is None
        and softcap is None
        and not z_loss
        and type(input) is _Tensor  # (subclasses take the checked path below)
        and type(weight) is _Tensor
        and type(target) is _Tensor
        and input.is_cpu  # (meta and mixed devices must reach the checks, not run silently)
        and weight.is_cpu
        and target.is_cpu
        and 0.0 <= label_smoothing <= 1.0  # torch silently accepts negative and nan smoothing
        and not target.requires_grad
        and (bias is None or (type(bias) is _Tensor and bias.is_cpu))
        and (class_weight is None or (
            type(class_weight) is _Tensor and class_weight.is_cpu and not class_weight.requires_grad
        ))
    ):
        # Small CPU problems: F.linear + cross_entropy, unchecked; if torch refuses an argument,
        # crossent's checks below say which and why (they cost more than torch's whole call here).
        shape, wshape, tshape = input.shape, weight.shape, target.shape
        if (
            len(wshape) == 2
            and shape
            and (bias is None or bias.shape == wshape[:1])
            and _dispatch.linear_torch_first(input, input.numel() // max(shape[-1], 1) * wshape[0])
        ):
            tokens = shape[:-1]
            soft = tshape != tokens
            if not soft or tshape == tokens + wshape[:1]:
                try:
                    return _linear_cross_entropy_composed(
                        input, weight, target, bias, class_weight, ignore_index, reduction,
                        label_smoothing, None, soft, None,
                    )
                except Exception:  # noqa: BLE001
                    pass
    fn = "linear_cross_entropy"
    _checks.linear_operands(fn, input, weight, bias)
    opts = _checks.loss_options(
        fn,
        ignore_index=ignore_index,
        reduction_=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        normalizer=normalizer,
    )
    chunk_size = _checks.linear_options(fn, opts, chunk_size)
    num_classes = weight.shape[0]
    class_weight = _checks.class_weight(fn, class_weight, input, num_classes, name="class_weight")
    target, soft = _checks.linear_targets(
        fn, input, target, num_classes=num_classes, ignore_index=ignore_index
    )
    dtype = _checks.loss_dtype(fn, dtype, input)
    if select() is Backend.REFERENCE:
        return _linear_cross_entropy_reference(
            input, weight, target, bias, class_weight, opts, soft, dtype
        )
    _checks.linear_no_fused_gradient(fn, class_weight=class_weight, target=target if soft else None)
    if (
        not opts.z_loss
        and opts.softcap is None
        and _dispatch.linear_torch_first(input, target.numel() if soft else target.numel() * num_classes)
    ):
        return _linear_cross_entropy_composed(
            input, weight, target, bias, class_weight, opts.ignore_index, opts.reduction,
            opts.label_smoothing, opts.normalizer, soft, dtype,
        )
    return torch_chunked_linear.linear_cross_entropy(
        input, weight, bias, target, class_weight, opts, soft=soft, chunk_size=chunk_size,
        dtype=dtype,
    )


def _linear_cross_entropy_composed(
    input, weight, target, bias, class_weight, ignore_index, reduction, label_smoothing,
    normalizer, soft, dtype,
):
    """The contract, literally, for small CPU problems: F.linear, then cross_entropy (torch's kernel)."""
    logits = _torch_F.linear(input, weight, bias)
    flat = target
    if input.dim() != 2:  # (a view costs ~8 us of autograd here: only when needed)
        v = weight.shape[0]
        logits = logits.reshape(-1, v)
        flat = target.reshape(-1, v) if soft else target.reshape(-1)
    if dtype is not None:
        logits = logits.to(dtype)  # small: the copy costs less than the fused path's Python
    red = "sum" if normalizer is not None else reduction
    if soft or _ce_kernel is None or _has_torch_function(logits, flat, class_weight):
        loss = cross_entropy(
            logits, flat, class_weight, ignore_index=ignore_index, reduction=red,
            label_smoothing=label_smoothing,
        )
    else:  # cross_entropy's torch route, inlined (checked by the caller: smoothing in [0, 1])
        loss = _ce_kernel(logits, flat, class_weight, _REDUCTION_ENUM[red], ignore_index, label_smoothing)
    if normalizer is not None:
        loss = loss / normalizer
    return loss.reshape(input.shape[:-1]) if reduction == "none" else loss


def _linear_cross_entropy_reference(input, weight, target, bias, class_weight, opts, soft, dtype):
    """The contract, literally: the full logits in float64 through reference.cross_entropy."""
    v = weight.shape[0]
    b = bias.double() if bias is not None else None
    logits = torch.nn.functional.linear(input.double(), weight.double(), b).reshape(-1, v)
    flat = target.reshape(-1, v) if soft else target.reshape(-1)
    reduction = "sum" if opts.normalizer is not None else opts.reduction
    loss = reference.cross_entropy(
        logits, flat, class_weight, opts.ignore_index, reduction, opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap,
    )
    if opts.normalizer is not None:
        loss = loss / opts.normalizer
    out_dtype = torch_chunked.loss_dtype(input, target, soft, dtype)
    return loss.reshape(input.shape[:-1] if opts.reduction == "none" else ()).to(out_dtype)


linear_cross_entropy.__doc__ = f"""Cross-entropy of a linear layer's output, without materialising the logits.

    input: (..., D) hidden states, float64/32/16 or bfloat16; weight: (V, D) and bias: (V,) or
    None, of the input's dtype and device (as for F.linear); target: class indices of shape
    input.shape[:-1] (int64; other integer dtypes converted), each in [0, V) or ignore_index, or
    class probabilities of shape input.shape[:-1] + (V,).

    Equivalent to (value, and gradients w.r.t. input, weight and bias)::

        logits = F.linear(input, weight, bias).reshape(-1, V)                # never built
        t = target.reshape(-1) if indices else target.reshape(-1, V)
        loss = crossent.cross_entropy(logits, t, weight=class_weight, ignore_index=ignore_index,
                                      reduction=reduction if normalizer is None else "sum",
                                      label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        if normalizer is not None: loss = loss / normalizer
        if reduction == "none": loss = loss.reshape(input.shape[:-1])

    Per-token losses, class weights, smoothing, z_loss and softcap as in crossent.cross_entropy.
{_WEIGHTED_MEAN}
    normalizer (reduction='mean' only; a number or a one-element tensor): the summed loss is
        divided by it instead of by the count (or summed weights) of counted tokens, for gradient
        accumulation across micro-batches (transformers' ``num_items_in_batch``).
    chunk_size: tokens per chunk; by default chosen from N, D, V, the dtype and the options so that
        one chunk's buffers take at most 7/8 of the bytes of the float32 weight gradient (7D/8
        rows in float32; at least 16 MiB; see backends/torch_chunked_linear.py).
{_DTYPE}

    Memory: O(chunk_size * V) beyond the inputs and their gradients, never O(N * V).
    FLOPs: 6 N D V for reduction 'mean'/'sum' (the three products any exact method needs);
    8 N D V for 'none' (backward recomputes the logits, since the per-token grad_output is known
    only then); 2 N D V when no gradient is needed.
    16-bit inputs: products in the input dtype, softmax math and the accumulation of the weight
    and bias gradients in float32; gradients come back in the inputs' dtypes.
    Gradients w.r.t. class_weight or probability targets are not computed by the fused path (it
    raises if they are required); ``crossent.use_backend("reference")`` computes the contract
    above literally in float64 and gives them.
    Results are deterministic run to run for a given chunk_size.
    """
