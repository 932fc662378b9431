"""Which backend runs a call. The whole rule is described here and written in three modules:
rule 1 and the backends' registry in `_backends` (re-exported here), rule 2 on the raw arguments,
asked before the checks, in `_to_torch`, and the rest below.

Backends (``Backend``; each a module or folder under backends/ with the functions of the contract
and a `DESCRIPTOR` -- where it runs, where the rule picks it, its size thresholds, its row
kernels, its compiled linear op -- which this module reads):
  fused      crossent's fused algorithms (backends/loops) on torch-op row kernels
             (backends/chunked): loss and gradient in one pass, gradient-sized memory only,
             deterministic.
  torch      torch's own kernels (backends/torch_kernels.py), for small inputs where a Python-level
             fused path cannot win: there, Python dispatch is the whole cost (~70 us for torch's
             forward+backward at 64 x 10). Used only for options torch has.
  composite  the row math as plain differentiable torch ops in the compute dtype
             (backends/composite.py): what torch.func transforms and torch.compile can trace.
  reference  the float64 formulas of reference.py through autograd (backends/reference.py): slow,
             differentiable in every argument torch differentiates.
  triton     the fused algorithms on Triton row kernels (backends/triton/): GPUs; CPU tensors under
             TRITON_INTERPRET=1 (tests). Optional extra ``crossent[triton]``.

Rule, per call (`cross_entropy`, ..., `linear_cross_entropy` below run it and call the backend):
  1. a forced backend wins: ``crossent.use_backend(name)`` (a context manager; it forces the calls
     of its own thread or asyncio task, innermost block first), or the environment
     variable ``CROSSENT_BACKEND`` (read once when crossent is imported, validated at the first
     call: a per-call os.environ lookup costs more than torch's whole loss at 8 x 2); except that
     a forced 'torch' runs only where torch has the options (else the rule continues at 3), and a
     forced 'fused' never drops a gradient it cannot give (rule 3 applies first);
  2. torch, where no option torch lacks is on (z_loss, softcap, inplace_backward, chunk_size or
     chunking options; a normalizer divides torch's sum, dtype=float32 casts the small input) and
     the input has at most the fused backend's ``torch_below`` elements on its device (the
     crossovers measured by benchmarks/bench_shapes.py on the reference machine, with and without
     a gradient, per family; for linear_cross_entropy, N * V logits, every tensor on one device;
     nll_loss on the CPU at every size: a gather and a scatter, no fused pass to win).
     Below them torch's row-fused C++ kernels beat any Python-level chunk loop, above them its fresh
     N x C temporaries (page faults) cost more than crossent's single pass. On an accelerator the
     fused backend is Triton where it runs (its threshold: host overhead), else there is none and
     torch runs at every size. For speed this rule is tried *before* crossent's checks
     (`*_to_torch`, a few hundred nanoseconds) and its answer is handed to the rule after the
     checks (computed once); if torch refuses the arguments, the checks run and name the problem;
  3. composite, when autograd will ask for a gradient the fused kernels do not give (probability
     targets and their class weight, BCE targets: torch differentiates them): it gives every
     gradient torch gives, with torch's formulas. linear_cross_entropy never falls back to the
     logits silently: there rule 3 raises, naming crossent.use_backend('reference');
  4. otherwise the fused algorithms on the first backend of FUSED_ORDER its descriptor picks on the
     device ('triton' on an accelerator where Triton runs, else 'fused') -- except that under
     torch.func transforms (functorch-wrapped inputs) or while torch.compile traces, where the
     fused kernels' Python loops and precomputed gradients cannot be traced, composite runs instead
     (a forced 'fused' or 'triton' included: Inductor then generates its own fused kernels from the
     composite ops); and that torch.compile of a 'mean'/'sum' linear_cross_entropy runs the fused
     backend's custom op (its descriptor's ``compiled_linear``), because the composite formulas
     would build the N x V logits; and cross_entropy (no gradient for weight or probabilities, no
     inplace_backward) runs the fused backend's ``compiled_cross_entropy`` custom op where it has
     one (Triton: the graph keeps its kernel; the CPU backend has none), and so do the binary
     losses (no gradient for target, weight or pos_weight: ``compiled_binary``). Second derivatives and repeated backward on the fused paths
     recompute through composite (backends/autograd.py). A forced 'triton' runs CPU tensors only
     under TRITON_INTERPRET=1 (else a clear error).
Determinism holds on every path (torch's class-index kernels reduce in a fixed order; the torch
backend reduces probability targets and the binary losses in crossent's fixed order).
"""

from __future__ import annotations

import torch

from . import _checks, _to_torch
from ._backends import (  # noqa: F401  (rule 1, in its own module; re-exported)
    FUSED_ORDER,
    Backend,
    backend,
    descriptor,
    forced,
    fused_for,
    use_backend,
)
from ._options import LossOptions

# ---------------------------------------------------------------- the rule, after the checks


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def _traced(tensors) -> bool:
    """torch.func transforms see functorch-wrapped tensors (any argument may be the one being
    transformed); Dynamo says when it traces."""
    if _compiling is not None and _compiling():
        return True
    return _is_wrapped is not None and any(t is not None and _is_wrapped(t) for t in tensors)


def _choose(tensors, torch_ok: bool, small: bool, needs_autograd: bool) -> Backend:
    """Rules 1, 3 and 4 (rule 2's answer is ``small``: torch's kernel is the better one)."""
    f = forced()
    if f in (Backend.REFERENCE, Backend.COMPOSITE):
        return f
    if f is Backend.TORCH and torch_ok:
        return f
    if f is None and torch_ok and small:
        return Backend.TORCH
    if needs_autograd:
        return Backend.COMPOSITE
    if _traced(tensors):
        return Backend.COMPOSITE
    return fused_for(tensors[0].device)


def _torch_has(opts: LossOptions) -> bool:
    return not (opts.z_loss or opts.inplace_backward or opts.softcap is not None)


def cross_entropy(input, target, weight, opts: LossOptions, small: bool):
    needs = _needs_grad(weight, target if opts.soft else None)
    b = _choose((input, target, weight), _torch_has(opts), small, needs)
    if (b is Backend.COMPOSITE and not needs and not opts.inplace_backward and _compiling is not None
            and _compiling() and forced() is not Backend.COMPOSITE):
        compiled = descriptor(fused_for(input.device)).compiled_cross_entropy
        if compiled is not None:  # torch.compile: the fused kernel as one custom op (Triton)
            return compiled(input, target, weight, opts)
    return backend(b).cross_entropy(input, target, weight, opts)


def nll_loss(input, target, weight, opts: LossOptions, small: bool):
    b = _choose((input, target, weight), True, small, _needs_grad(weight))
    return backend(b).nll_loss(input, target, weight, opts)


def _compiled_binary(b: Backend, needs: bool, device):
    """torch.compile: the fused backend's binary custom op where it has one (the kernel kept in
    the graph), for a call whose only gradient is the input's; else None (composite)."""
    if (b is Backend.COMPOSITE and not needs and _compiling is not None and _compiling()
            and forced() is not Backend.COMPOSITE):
        return descriptor(fused_for(device)).compiled_binary
    return None


def binary_cross_entropy(input, target, weight, opts: LossOptions, small: bool):
    needs = _needs_grad(target, weight)
    b = _choose((input, target, weight), True, small, needs)
    compiled = _compiled_binary(b, needs, input.device)
    if compiled is not None:
        return compiled(input, target, weight, None, opts, logits=False)
    return backend(b).binary_cross_entropy(input, target, weight, opts)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions, small: bool):
    needs = _needs_grad(target, weight, pos_weight)
    b = _choose((input, target, weight, pos_weight), True, small, needs)
    compiled = _compiled_binary(b, needs, input.device)
    if compiled is not None:
        return compiled(input, target, weight, pos_weight, opts, logits=True)
    return backend(b).binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    """The rule for checked linear arguments (any shape: rule 2 is asked here, not before the
    checks, for the K-dim and unbatched calls its fast predicate leaves out)."""
    torch_ok = not opts.z_loss and opts.softcap is None and opts.chunk_size is None
    logits = input.shape[0] * linear_weight.numel() // max(linear_weight.shape[-1], 1)
    tensors = (input, linear_weight, target, linear_bias, weight)
    b = _choose(tensors, torch_ok, logits <= _to_torch.LINEAR_TORCH_MAX_LOGITS, False)
    fn = backend(b).linear_cross_entropy
    if (b is Backend.COMPOSITE and _compiling is not None and _compiling() and opts.reduction != "none"
            and forced() is not Backend.COMPOSITE):
        b = fused_for(input.device)  # torch.compile: the fused loss as one custom op, no logits
        fn = descriptor(b).compiled_linear
    if b in FUSED_ORDER:
        _checks.linear_no_fused_gradient(
            "linear_cross_entropy", weight=weight, target=target if opts.soft else None)
    return fn(input, linear_weight, target, linear_bias, weight, opts)


# ---------------------------------------------------------------- log-probabilities and entropy
#
# The same rule, without the torch-first try (the checks run first: these calls are RL-sized,
# not classifier-sized). Rule 2's torch is torch's own composition (log_softmax + gather + the
# entropy from it, backends/torch_kernels.py), at the crossovers measured for cross_entropy
# (the same log_softmax-sized work against the same chunk loop) and for linear_cross_entropy
# (N * V logits). No gradient is refused anywhere (targets are class indices).


def log_probs(input, target, opts: LossOptions, entropy: bool):
    small = _to_torch.by_size(input, _to_torch.TORCH_MAX_NUMEL, _to_torch.TORCH_MAX_NUMEL_NO_GRAD)
    b = _choose((input, target), True, small, False)
    return backend(b).log_probs(input, target, opts, entropy)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool):
    """input (N, D), linear_weight (V, D), target (N,): checked."""
    logits = input.shape[0] * linear_weight.shape[0]
    if input.is_cpu:
        small = logits <= _to_torch.LINEAR_TORCH_MAX_LOGITS
    else:
        small = logits <= descriptor(fused_for(input.device)).torch_below("linear", True, input.device)
    tensors = (input, linear_weight, target, linear_bias)
    b = _choose(tensors, opts.chunk_size is None, small, False)
    return backend(b).linear_log_probs(input, linear_weight, target, linear_bias, opts, entropy)
# ---------------------------------------------------------------- the distillation losses
#
# torch has no such loss (rule 2 never applies) and the fused kernels give every gradient the
# losses define -- the student's input, weight and bias; the teacher is a constant -- so rule 3
# never applies either: rules 1 and 4 (torch.func and torch.compile tracing: composite).


def linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
                             teacher_linear_bias, target, opts):
    tensors = (input, linear_weight, linear_bias, teacher_input, teacher_linear_weight, teacher_linear_bias, target)
    b = _choose(tensors, False, False, False)
    return backend(b).linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight,
                                               linear_bias, teacher_linear_bias, target, opts)


def linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs, linear_bias, opts):
    b = _choose((input, linear_weight, linear_bias, teacher_ids, teacher_log_probs), False, False, False)
    return backend(b).linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs,
                                                    linear_bias, opts)
