"""Which backend runs a call. The whole rule is written here and nowhere else.

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
     a gradient, per family; for linear_cross_entropy, N * V logits, every tensor on one device).
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

import contextlib
import enum
import importlib
import os

import torch

from . import _checks, _forced
from ._options import LossOptions


class Backend(str, enum.Enum):
    FUSED = "fused"
    TORCH = "torch"
    COMPOSITE = "composite"
    REFERENCE = "reference"
    TRITON = "triton"


# Each backend's module (a new backend adds its entry here). They are imported with this module,
# not at first use: torch.compile cannot trace an import.
_MODULES = {
    Backend.FUSED: ".backends.chunked",
    Backend.TORCH: ".backends.torch_kernels",
    Backend.COMPOSITE: ".backends.composite",
    Backend.REFERENCE: ".backends.reference",
    Backend.TRITON: ".backends.triton",  # (imports Triton only at its first launch)
}
_loaded = {b: importlib.import_module(name, __package__) for b, name in _MODULES.items()}
# The fused algorithms' backends, in the rule's order of preference (rule 4).
FUSED_ORDER = (Backend.TRITON, Backend.FUSED)


def backend(b: Backend):
    """The module of backend ``b``."""
    return _loaded[b]


def descriptor(b: Backend):
    return _loaded[b].DESCRIPTOR


# The CPU crossovers of rule 2 (the fused backend's descriptor has them with their measurements),
# as module values: read on the path of every small call, and pinned by tests.
_cpu = _loaded[Backend.FUSED]
_torch_kernels = _loaded[Backend.TORCH]
SERIAL_REDUCTION = _torch_kernels.SERIAL_REDUCTION
# torch's cross-entropy kernel and what its arguments need, for `plain_cross_entropy_on_torch`
_ce_kernel, _REDUCTION_ENUM = _torch_kernels.CE_KERNEL, _torch_kernels.REDUCTION_ENUM
_has_torch_function = _torch_kernels.has_torch_function
_BAD_INPUT, _NOT_BAD_INPUT = _torch_kernels.BAD_INPUT, _torch_kernels.NOT_BAD_INPUT
TORCH_MAX_NUMEL = _cpu.TORCH_MAX_NUMEL
TORCH_MAX_NUMEL_NO_GRAD = _cpu.TORCH_MAX_NUMEL_NO_GRAD
BINARY_TORCH_MAX_NUMEL = _cpu.BINARY_TORCH_MAX_NUMEL
LINEAR_TORCH_MAX_LOGITS = _cpu.LINEAR_TORCH_MAX_LOGITS

_ENV_BACKEND = os.environ.get("CROSSENT_BACKEND") or None


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Force every crossent loss inside the ``with`` block onto one backend (tests, debugging).

    ``torch`` is honoured only where torch has the requested options; elsewhere the call runs on
    ``fused``. The block forces the calls of its own thread (or asyncio task) only, and nested
    blocks restore the outer one's backend on exit, exceptions included (`_forced`).
    """
    with _forced.block(_parse(name, "use_backend")):
        yield


def _parse(name, where: str) -> Backend:
    try:
        return Backend(name)
    except ValueError:
        _checks.unknown_backend(where, name, [b.value for b in Backend])


def forced() -> Backend | None:
    """The backend forced in this thread or task: its innermost use_backend block, else the
    environment's CROSSENT_BACKEND."""
    b = _forced.here()
    if b is not None:
        return b
    return _parse(_ENV_BACKEND, "CROSSENT_BACKEND") if _ENV_BACKEND else None


_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_HALF = (torch.float16, torch.bfloat16)


def fused_for(device) -> Backend:
    """The fused algorithms' backend on ``device``: a forced 'fused' or 'triton' (where it cannot
    run, it says so), else the first of FUSED_ORDER whose descriptor picks the device."""
    f = forced()
    if f in FUSED_ORDER:
        return f
    for b in FUSED_ORDER:
        if descriptor(b).picked_on(device):
            return b
    return Backend.FUSED


# ---------------------------------------------------------------- rule 2, before the checks


def _to_torch_by_size(input, limit: int, limit_no_grad: int, family: str = "cross_entropy") -> bool:
    """Rule 2's size test: torch's kernel at most ``limit`` elements (``limit_no_grad`` when no
    gradient will be needed) on the CPU; off it, below the device's fused backend's threshold.
    Ordered for the small call: one numel() and done."""
    n = input.numel()
    if n <= limit:  # (small enough either way: the device and gradient questions cost calls)
        return True
    if not input.is_cpu:
        needs_grad = input.requires_grad and _grad_enabled()
        return n <= descriptor(fused_for(input.device)).torch_below(family, needs_grad, input.device)
    return n <= limit_no_grad and not (input.requires_grad and _grad_enabled())


_INT64 = torch.int64
REFUSED = object()  # torch's kernel refused the arguments of a call


def plain_cross_entropy_on_torch(input, target, weight, ignore_index, reduction, label_smoothing):
    """Rules 1-2 and torch's kernel in one call, for the commonest small call: the caller has
    seen no crossent-only option and no legacy argument; here nothing is forced, the input is a
    tensor of at most TORCH_MAX_NUMEL elements, no __torch_function__ override or mode is active,
    the reduction is torch's and the smoothing in [0, 1]. Returns torch's loss; None when the
    whole rule must decide (any other call); REFUSED when torch refused the arguments (then the
    checks name them, without asking torch again).
    Above torch's serial grain only int64 class indices go this way (torch's probability-target
    path ends in a thread-dependent sum, which `cross_entropy_unchecked` reorders); below it the
    target is torch's to accept or refuse, so the tiny call pays no test of it.

    Written flat for speed (its except clause is `functional._torch_first`'s, inlined: each call
    layer costs 0.1-0.3 us here). At 64 x 10 (forward, minimum over 60 x 2000 interleaved calls,
    each call's cost above torch's kernel): F.cross_entropy 0.7-1.4 us, this path 2.4 us (the
    two-step path before it, `cross_entropy_to_torch` then `_torch_first`, 2.8-3.0 us). What
    remains is the size test: any tensor accessor (numel, dim, shape, nbytes) costs 0.35-0.5 us
    beside a kernel call; torch makes none."""
    if _forced.active or _ENV_BACKEND or not isinstance(input, _Tensor):
        return None
    n = input.numel()
    if n > TORCH_MAX_NUMEL or (n > SERIAL_REDUCTION and getattr(target, "dtype", None) is not _INT64):
        return None
    r = _REDUCTION_ENUM.get(reduction)
    if r is None or _ce_kernel is None or not 0.0 <= label_smoothing <= 1.0 or _has_torch_function(input, target, weight):
        return None
    try:
        return _ce_kernel(input, target, weight, r, ignore_index, label_smoothing)
    except _BAD_INPUT as err:
        if isinstance(err, _NOT_BAD_INPUT):
            raise
        return REFUSED


def cross_entropy_to_torch(input, label_smoothing, z_loss, softcap, inplace_backward, dtype) -> bool:
    """Rules 1-2 for cross_entropy on the raw arguments. On the path of every small call: written
    for speed (the common case passes the first test and returns at the last line)."""
    if (z_loss or inplace_backward or softcap is not None or dtype is not None or _forced.active
            or _ENV_BACKEND or not 0.0 <= label_smoothing <= 1.0):
        return _cross_entropy_to_torch_otherwise(input, label_smoothing, z_loss, softcap, inplace_backward, dtype)
    if not isinstance(input, _Tensor):
        return False
    return _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)


def _cross_entropy_to_torch_otherwise(input, label_smoothing, z_loss, softcap, inplace_backward, dtype) -> bool:
    if z_loss or inplace_backward or softcap is not None:
        return False
    if not 0.0 <= label_smoothing <= 1.0:  # torch silently accepts negative and nan smoothing
        return False
    if dtype is not None and not (dtype is torch.float32 and isinstance(input, _Tensor) and input.dtype in _HALF):
        return False
    return nll_loss_to_torch(input)


def nll_loss_to_torch(input) -> bool:
    """Rules 1-2 for nll_loss on the raw arguments (it has no crossent-only option); the tail of
    cross_entropy's."""
    if (_forced.active or _ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    if not isinstance(input, _Tensor):
        return False
    return _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)


def binary_to_torch(input) -> bool:
    """Rules 1-2 for the binary losses on the raw arguments."""
    if (_forced.active or _ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    return isinstance(input, _Tensor) and _to_torch_by_size(
        input, BINARY_TORCH_MAX_NUMEL, BINARY_TORCH_MAX_NUMEL, "binary")


def _one_device(first, *others) -> bool:
    """Every tensor (None skipped) on first's device, and that not meta: torch would compute a
    meta loss from a meta weight, silently, and meet a mixed-device call with its own message,
    not crossent's. (Callers test ``is_cpu`` first: torch.device objects, built per ``.device``
    access, cost ~0.5 us more on the small CPU call.)"""
    dev = first.device
    if dev.type == "meta":
        return False
    for t in others:
        if t is not None and t.device != dev:
            return False
    return True


def linear_to_torch(input, linear_weight, target, linear_bias, weight, ignore_index, label_smoothing,
                    extensions: bool) -> bool:
    """Rules 1-2 for linear_cross_entropy on the raw arguments: the composition F.linear +
    cross_entropy for small problems with 2-D input, where the fused loop's Python cost
    dominates. ``extensions``: any crossent-only argument (or ``options``) is set. Written for
    speed: what torch itself refuses (dtypes, shapes, a K-dim weight F.linear cannot take) is not
    tested here -- torch raises, and crossent's checks run."""
    if extensions or not 0.0 <= label_smoothing <= 1.0:
        return False
    if type(input) is not _Tensor or type(linear_weight) is not _Tensor or type(target) is not _Tensor:
        return False  # (subclasses take the checked path)
    if (linear_bias is not None and type(linear_bias) is not _Tensor) or (
        weight is not None and type(weight) is not _Tensor
    ):
        return False
    if input.dim() != 2:
        return False
    if not (input.is_cpu and linear_weight.is_cpu and target.is_cpu  # (the small CPU call: ~0.2 us)
            and (linear_bias is None or linear_bias.is_cpu) and (weight is None or weight.is_cpu)):
        if not _one_device(input, linear_weight, target, linear_bias, weight):
            return False
    if ignore_index is not None and target.is_floating_point():
        return False  # torch refuses ignore_index with probabilities: the checks say so
    if (_forced.active or _ENV_BACKEND) and (f := forced()) is not None:
        return f is Backend.TORCH
    return input.shape[0] * linear_weight.shape[0] <= LINEAR_TORCH_MAX_LOGITS


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
    b = _choose(tensors, torch_ok, logits <= LINEAR_TORCH_MAX_LOGITS, False)
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
    small = _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)
    b = _choose((input, target), True, small, False)
    return backend(b).log_probs(input, target, opts, entropy)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool):
    """input (N, D), linear_weight (V, D), target (N,): checked."""
    logits = input.shape[0] * linear_weight.shape[0]
    if input.is_cpu:
        small = logits <= LINEAR_TORCH_MAX_LOGITS
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
