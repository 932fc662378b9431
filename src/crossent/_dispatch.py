"""Which backend runs a call. The whole rule is written here and nowhere else.

Backends (``Backend``; each a module under backends/ with the functions of the contract in
backends/__init__.py):
  fused      crossent's own chunked kernels (backends/chunked/): loss and gradient in one pass,
             gradient-sized memory only, deterministic.
  torch      torch's own kernels (backends/torch_kernels.py), for small CPU inputs where a
             Python-level fused path cannot win: there, Python dispatch is the whole cost (~70 us
             for torch's forward+backward at 64 x 10). Used only for options torch has.
  composite  the same formulas as plain differentiable torch ops in the compute dtype
             (backends/composite.py): what torch.func transforms and torch.compile can trace.
  reference  the float64 formulas of reference.py through autograd (backends/reference.py): slow,
             differentiable in every argument torch differentiates.
  triton     the fused algorithms with Triton kernels (backends/triton/): GPUs; CPU tensors
             under TRITON_INTERPRET=1 (tests). Optional extra ``crossent[triton]``.

Rule, per call (`cross_entropy`, ..., `linear_cross_entropy` below return the function to call):
  1. a forced backend wins: ``crossent.use_backend(name)`` (a context manager), or the environment
     variable ``CROSSENT_BACKEND`` (read once when crossent is imported, validated at the first
     call: a per-call os.environ lookup costs more than torch's whole loss at 8 x 2); except that
     a forced 'torch' runs only where torch has the options (else the rule continues at 3), and a
     forced 'fused' never drops a gradient it cannot give (rule 3 applies first);
  2. torch, where no option torch lacks is on (z_loss, softcap, inplace_backward, chunk_size or
     chunking options; a normalizer divides torch's sum, dtype=float32 casts the small input) and
     the input's numel is at most TORCH_MAX_NUMEL (TORCH_MAX_NUMEL_NO_GRAD when no gradient will
     be needed; BINARY_TORCH_MAX_NUMEL for the binary losses; for linear_cross_entropy, N * V
     logits at most LINEAR_TORCH_MAX_LOGITS, every tensor on one device, 2-D input). Off the CPU,
     the losses on given logits go to torch at any size below TRITON_MIN_NUMEL, and at every
     size where the Triton kernels cannot run (no Triton installed, or a device it has no
     backend for). The CPU thresholds are the crossovers measured by benchmarks/bench_shapes.py
     on the reference machine (docs/PERFORMANCE.md): below them torch's row-fused C++ kernels beat
     any Python-level chunk loop, above them its fresh N x C temporaries (page faults) cost more
     than crossent's single pass. For speed this rule is tried *before* crossent's checks
     (`*_to_torch`, a few hundred nanoseconds); if torch refuses the arguments, the checks run and
     this rule is asked again with the checked arguments;
  3. reference, when autograd will ask for a gradient the fused kernels do not give (class
     weights, probability targets, BCE targets). linear_cross_entropy never falls back silently:
     there rule 3 raises, naming crossent.use_backend('reference') as the remedy;
  4. otherwise the fused algorithms: 'triton' (their Triton kernels, backends/triton/) on an
     accelerator where Triton runs, else 'fused' (torch ops; on an accelerator in chunks sized
     for it) -- except that under torch.func transforms (functorch-wrapped inputs) or while
     torch.compile traces (torch.compiler.is_compiling()), where the fused kernels' Python loops
     and precomputed gradients cannot be traced, composite runs instead (a forced 'fused' or
     'triton' included: Inductor then generates its own fused kernels from the composite ops).
     Second derivatives and repeated backward on the fused paths recompute through composite
     (backends/autograd.py). A forced 'triton' runs CPU tensors only under TRITON_INTERPRET=1
     (else a clear error). torch.compile of a 'mean'/'sum' linear_cross_entropy is the
     exception to composite: the fused backends run it as one custom op
     (backends/chunked/linear_op.py), because the composite formulas would build the N x V logits.
Determinism holds on every path (torch's class-index kernels reduce in a fixed order; the torch
backend reduces probability targets and the binary losses in crossent's fixed order).
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import os

import torch

from . import _checks
from ._options import LossOptions


class Backend(str, enum.Enum):
    FUSED = "fused"
    TORCH = "torch"
    COMPOSITE = "composite"
    REFERENCE = "reference"
    TRITON = "triton"


# Each backend's module. A new backend adds its entry here (and, if it runs only somewhere -- a
# GPU, an importable Triton -- a test of that in the rule below). They are imported with this
# module, not at first use: torch.compile cannot trace an import.
_MODULES = {
    Backend.FUSED: ".backends.chunked",
    Backend.TORCH: ".backends.torch_kernels",
    Backend.COMPOSITE: ".backends.composite",
    Backend.REFERENCE: ".backends.reference",
    Backend.TRITON: ".backends.triton",  # (imports Triton only at its first launch)
}
_loaded = {b: importlib.import_module(name, __package__) for b, name in _MODULES.items()}


def backend(b: Backend):
    """The module of backend ``b``."""
    return _loaded[b]


# Crossovers (elements of the input), measured with benchmarks/bench_shapes.py.
# 2 threads, float32, fused/torch time (2026-11-23):
#   forward+backward  0.52M elements 1.41, 1.05M 0.90, 2.05M 0.77, 16.4M 0.40
#   forward only      8.2M 1.51, 16.4M 0.55, 32.8M 0.50
TORCH_MAX_NUMEL = 3 << 18  # 786K
TORCH_MAX_NUMEL_NO_GRAD = 3 << 22  # 12.6M
BINARY_TORCH_MAX_NUMEL = 1 << 22  # BCE-with-logits fused/torch: 0.41M 1.16, 1.05M 1.18, 4.2M 0.96

# linear_cross_entropy: at most this many logits (N * V) on the CPU, the composition F.linear +
# cross_entropy (its logits, 4 MiB in float32, are then smaller than the one 16 MiB chunk the fused
# path would allocate anyway). Fused/composed forward+backward, float32, D=128 (2026-11-23):
# 640 logits 2.44, 0.26M 1.07, 0.51M 1.11, 1.0M 1.03, 2.1M 0.83-0.97, 4.2M 0.94-1.01, 8.4M 0.60.
LINEAR_TORCH_MAX_LOGITS = 1 << 20

# Off the CPU, inputs below this many elements go to torch's kernels even where Triton runs: there
# the call is bound by host overhead (an autograd.Function and a Triton launch cost tens of us of
# Python, torch's cross_entropy a few kernel launches). A conservative default, NOT measured: no
# GPU was available (benchmarks/bench_gpu.py measures the crossover on one; set it from there).
TRITON_MIN_NUMEL = 1 << 24  # 16.8M elements: 8192 x 2048

_forced: Backend | None = None
_ENV_BACKEND = os.environ.get("CROSSENT_BACKEND") or None


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Force every crossent loss inside the ``with`` block onto one backend (tests, debugging).

    ``torch`` is honoured only where torch has the requested options; elsewhere the call runs on
    ``fused``.
    """
    global _forced
    previous, _forced = _forced, _parse(name, "use_backend")
    try:
        yield
    finally:
        _forced = previous


def _parse(name, where: str) -> Backend:
    try:
        return Backend(name)
    except ValueError:
        _checks.unknown_backend(where, name, [b.value for b in Backend])


def forced() -> Backend | None:
    if _forced is not None:
        return _forced
    return _parse(_ENV_BACKEND, "CROSSENT_BACKEND") if _ENV_BACKEND else None


_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- rule 2, before the checks


def _to_torch_by_size(input, limit: int, limit_no_grad: int) -> bool:
    """Rule 2's size test: torch's kernel at most ``limit`` elements (``limit_no_grad`` when no
    gradient will be needed); off the CPU, below TRITON_MIN_NUMEL or where the Triton kernels
    cannot run. Ordered for the small call: one numel() and done."""
    n = input.numel()
    if n <= limit:  # (small enough either way: the device and gradient questions cost calls)
        return True
    if not input.is_cpu:
        return n < TRITON_MIN_NUMEL or not _triton_usable(input.device)
    return n <= limit_no_grad and not (input.requires_grad and _grad_enabled())


def _triton_usable(device) -> bool:
    return _loaded[Backend.TRITON].usable(device)


def _fused_for(device) -> Backend:
    """The fused algorithms' kernels: a forced 'fused' or 'triton' (where triton cannot run, it
    says so: backends/triton names the remedy); else Triton's on an accelerator where it runs,
    else torch ops (on an accelerator in chunks sized for it: backends/chunked/kernel.py)."""
    f = forced()
    if f in (Backend.TRITON, Backend.FUSED):
        return f
    if device.type != "cpu" and _triton_usable(device):
        return Backend.TRITON
    return Backend.FUSED


def cross_entropy_to_torch(input, label_smoothing, z_loss, softcap, inplace_backward, dtype) -> bool:
    """Rules 1-2 for cross_entropy on the raw arguments. On the path of every small call: written
    for speed (~250 ns; the common case passes the first test and returns at the last line)."""
    if (z_loss or inplace_backward or softcap is not None or dtype is not None or _forced is not None
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
    if _forced is not None or _ENV_BACKEND:
        return forced() is Backend.TORCH
    if not isinstance(input, _Tensor):
        return False
    return _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)


def nll_loss_to_torch(input) -> bool:
    """Rules 1-2 for nll_loss on the raw arguments (it has no crossent-only option)."""
    if _forced is not None or _ENV_BACKEND:
        return forced() is Backend.TORCH
    if not isinstance(input, _Tensor):
        return False
    return _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)


def binary_to_torch(input) -> bool:
    """Rules 1-2 for the binary losses on the raw arguments."""
    if _forced is not None or _ENV_BACKEND:
        return forced() is Backend.TORCH
    if not isinstance(input, _Tensor):
        return False
    return _to_torch_by_size(input, BINARY_TORCH_MAX_NUMEL, BINARY_TORCH_MAX_NUMEL)


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
    cross_entropy for small CPU problems with 2-D input, where the fused loop's Python cost
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
    if _forced is not None or _ENV_BACKEND:
        return forced() is Backend.TORCH
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


def _compiles_fused_linear(tensors, opts: LossOptions) -> bool:
    """torch.compile traces a scalar-reduction linear loss that no forced 'composite' wants: the
    fused backends run it as one custom op (backends/chunked/linear_op.py), never the composite
    formulas' N x V logits."""
    return (_compiling is not None and _compiling() and opts.reduction != "none"
            and forced() is not Backend.COMPOSITE)


def _choose(tensors, torch_ok: bool, small: bool, needs_reference: bool) -> Backend:
    f = forced()
    if f in (Backend.REFERENCE, Backend.COMPOSITE):
        return f
    if f is Backend.TORCH and torch_ok:
        return f
    if f is None and torch_ok and small:
        return Backend.TORCH
    if needs_reference:
        return Backend.REFERENCE
    if _traced(tensors):
        return Backend.COMPOSITE
    return _fused_for(tensors[0].device)


def _torch_has(opts: LossOptions) -> bool:
    return not (opts.z_loss or opts.inplace_backward or opts.softcap is not None)


def cross_entropy(input, target, weight, opts: LossOptions):
    small = _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)
    b = _choose((input, target, weight), _torch_has(opts), small, _needs_grad(weight, target if opts.soft else None))
    return backend(b).cross_entropy


def nll_loss(input, target, weight, opts: LossOptions):
    small = _to_torch_by_size(input, TORCH_MAX_NUMEL, TORCH_MAX_NUMEL_NO_GRAD)
    return backend(_choose((input, target, weight), True, small, _needs_grad(weight))).nll_loss


def binary_cross_entropy(input, target, weight, opts: LossOptions):
    small = _to_torch_by_size(input, BINARY_TORCH_MAX_NUMEL, BINARY_TORCH_MAX_NUMEL)
    return backend(_choose((input, target, weight), True, small, _needs_grad(target, weight))).binary_cross_entropy


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions):
    small = _to_torch_by_size(input, BINARY_TORCH_MAX_NUMEL, BINARY_TORCH_MAX_NUMEL)
    b = _choose((input, target, weight, pos_weight), True, small, _needs_grad(target, weight, pos_weight))
    return backend(b).binary_cross_entropy_with_logits


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    torch_ok = not opts.z_loss and opts.softcap is None and opts.chunk_size is None
    logits = input.shape[0] * linear_weight.numel() // max(linear_weight.shape[-1], 1)
    small = logits <= LINEAR_TORCH_MAX_LOGITS
    no_fused_grad = {"weight": weight, "target": target if opts.soft else None}
    tensors = (input, linear_weight, target, linear_bias, weight)
    b = _choose(tensors, torch_ok, small, False)
    if b is Backend.COMPOSITE and _compiles_fused_linear(tensors, opts):
        b = _fused_for(input.device)
    if b in (Backend.FUSED, Backend.TRITON):
        _checks.linear_no_fused_gradient("linear_cross_entropy", **no_fused_grad)
    return backend(b).linear_cross_entropy
