"""What differs between the torch versions crossent runs on (2.6 and newer), asked of the installed
torch itself: feature detection, not a table of version numbers.

The linear loss's API. ``F.linear_cross_entropy``, ``nn.LinearCrossEntropyLoss`` and
``nn.LinearCrossEntropyOptions`` exist from torch 2.13 on, and the options' accepted values
changed in 2.14 (``acc_policy="balanced"`` removed; pytorch PR #187838 and its follow-up). Where
torch has the options class, crossent checks every ``options`` object by building torch's own
class from its fields (torch's checks, accepted values and ``ValueError``: an object from another
torch version or an options-like object meets the checks of the torch that runs); where torch has
none, crossent's equivalent below stands in, with the fields and checks of torch 2.14.

Which calls torch's chunked path takes (the others materialise the logits and warn that the
options are ignored): options given, reduction 'mean'/'sum'/'none', no label smoothing, no K-dim
weight, not traced by torch.jit, and an int64 target -- or, from torch 2.14 on (PR #187053), a
probability target of the input's dtype that needs no gradient, with 'mean' or 'sum'. crossent
runs its fused kernel for all of them, but refuses there what torch's chunked path refuses: an
``acc_dtype`` other than the input's (float32 is also allowed for 16-bit inputs).

What each torch resolves "auto" chunking to (2.13: a per-(device, dtype) table, ``aspect_ratio:2``
for float32; 2.14: ``aspect_ratio`` capped at torch's reference peak, PR #187838) does not reach
crossent: its own measured chunk rule replaces "auto" on every version (``_checks.linear``;
``benchmarks/bench_auto_chunks.py``), and ``acc_policy`` / ``acc_dtype`` have no effect (crossent
accumulates in float32, or float64 for float64 inputs).

torch.distributed: the functional collectives crossent.distributed uses were renamed
(``all_gather_tensor`` -> ``all_gather_single``, ``reduce_scatter_tensor`` ->
``reduce_scatter_single``): torch 2.11 has only the old names, 2.13 both (the old ones deprecated).
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import torch


def parse(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a torch version string: "2.14.1+cu130" -> (2, 14, 1),
    "2.6.0a0+git12ab" -> (2, 6, 0)."""
    numbers = [int(p) for p in re.findall(r"\d+", re.split(r"[+a-z]", version, maxsplit=1)[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


TORCH = parse(torch.__version__)  # the installed torch

HAS_LINEAR_CROSS_ENTROPY = hasattr(torch.nn.functional, "linear_cross_entropy")
_TORCH_OPTIONS = getattr(torch.nn, "LinearCrossEntropyOptions", None)

# The fields crossent reads from an ``options`` object (torch 2.13's and 2.14's, the same five).
OPTION_FIELDS = ("allow_retain_graph", "batch_chunk_size", "chunking_method", "acc_policy", "acc_dtype")

_ACC_POLICIES = ("auto", "accurate", "compact")  # torch 2.14's (2.13 also took "balanced")
_ACC_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class _LinearCrossEntropyOptions:
    """crossent's stand-in for ``torch.nn.LinearCrossEntropyOptions`` on torch < 2.13, which has
    none: the same fields, defaults and checks as torch 2.14's (exported as
    ``crossent.nn.LinearCrossEntropyOptions``; on torch >= 2.13 that name is torch's own class).

    allow_retain_graph  keep the gradients computed in forward, so a second backward works
    batch_chunk_size    rows per chunk (None: one chunk, unless chunking_method chooses)
    chunking_method     "auto" (crossent's measured rule), "aspect_ratio[:k]" (torch's formula:
                        next_pow2(ceil(N / ceil(C / D))) // k rows), or None (batch_chunk_size)
    acc_policy          "auto", "accurate" or "compact": accepted, no effect in crossent
    acc_dtype           None or a floating dtype: accepted, no effect in crossent
    """

    allow_retain_graph: bool = False
    batch_chunk_size: int | None = None
    chunking_method: str | None = "auto"
    acc_policy: str = "auto"
    acc_dtype: torch.dtype | None = None

    def __post_init__(self):
        name = "LinearCrossEntropyOptions"
        if self.acc_policy not in _ACC_POLICIES:
            raise ValueError(
                f"{name}: acc_policy must be one of {', '.join(map(repr, _ACC_POLICIES))} "
                f"(torch 2.14's values), got {self.acc_policy!r}"
            )
        method = self.chunking_method
        if method is not None and method != "auto":
            base, sep, factor = method.partition(":") if isinstance(method, str) else ("", "", "")
            if not (base == "aspect_ratio" and (not sep or (factor.isdigit() and int(factor) > 0))):
                raise ValueError(
                    f"{name}: chunking_method must be 'auto', 'aspect_ratio', 'aspect_ratio:N' "
                    f"(N >= 1) or None, got {method!r}"
                )
        size = self.batch_chunk_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{name}: batch_chunk_size must be a positive int or None, got {size!r}")
        if self.acc_dtype is not None and self.acc_dtype not in _ACC_DTYPES:
            raise ValueError(
                f"{name}: acc_dtype must be None, torch.float16, torch.bfloat16, torch.float32 or "
                f"torch.float64, got {self.acc_dtype!r}"
            )


# torch's class where it exists, else crossent's equivalent (named, printed and pickled as
# crossent.nn.LinearCrossEntropyOptions, where it is exported).
if _TORCH_OPTIONS is not None:
    LinearCrossEntropyOptions = _TORCH_OPTIONS
else:
    LinearCrossEntropyOptions = _LinearCrossEntropyOptions
    LinearCrossEntropyOptions.__name__ = LinearCrossEntropyOptions.__qualname__ = "LinearCrossEntropyOptions"
    LinearCrossEntropyOptions.__module__ = "crossent.nn"


def linear_options(fn: str, options: object, invalid: type[Exception], wrong_type: type[Exception]):
    """``options`` as an instance of this torch's LinearCrossEntropyOptions (crossent's on torch <
    2.13), built from its fields so that the installed torch's checks decide what is accepted --
    also for an object made elsewhere: one of another torch version (unpickled), crossent's own,
    or any object with the five fields. Raises ``wrong_type`` when a field is missing and
    ``invalid`` (a ValueError, torch's type) when this torch refuses a value."""
    missing = [f for f in OPTION_FIELDS if not hasattr(options, f)]
    if missing:
        raise wrong_type(
            f"{fn}: options must be a torch.nn.LinearCrossEntropyOptions or None, got "
            f"{type(options).__name__} (no {', '.join(missing)}); on any torch, "
            f"crossent.nn.LinearCrossEntropyOptions is that class (crossent's own before torch 2.13)"
        )
    fields = {f: getattr(options, f) for f in OPTION_FIELDS}
    try:
        return LinearCrossEntropyOptions(**fields)
    except (ValueError, TypeError) as err:
        raise invalid(
            f"{fn}: options {_describe(fields)} are not valid on torch {torch.__version__}: {err}"
        ) from None


# torch 2.14 chunks probability targets too (its _adjust takes prob_target=, PR #187053); crossent's
# stand-in class (torch < 2.13) follows 2.14.
CHUNKS_PROBABILITY_TARGETS = _TORCH_OPTIONS is None or "prob_target" in inspect.signature(
    _TORCH_OPTIONS._adjust).parameters


def takes_torchs_chunked_path(input: torch.Tensor, target: torch.Tensor, reduction: str,
                              label_smoothing: float, k_dim: bool) -> bool:
    """Whether F.linear_cross_entropy of this torch, given options, runs its chunked op for these
    arguments (``target`` as the caller gave it) rather than the logits' composition."""
    if reduction not in ("mean", "sum", "none") or label_smoothing != 0.0 or k_dim:
        return False
    if torch.jit.is_tracing():
        return False
    if not target.is_floating_point():
        return target.dtype == torch.int64
    return (CHUNKS_PROBABILITY_TARGETS and reduction in ("mean", "sum") and target.dtype == input.dtype
            and not (target.requires_grad and torch.is_grad_enabled()))


def check_acc_dtype(fn: str, options, input: torch.Tensor, invalid: type[Exception]) -> None:
    """torch's chunked path refuses an acc_dtype that is neither the input's nor float32 for a
    16-bit input (a RuntimeError at call time; "auto"'s own choice is always one of those)."""
    acc, dtype = options.acc_dtype, input.dtype
    if acc is None or acc == dtype or (dtype in (torch.float16, torch.bfloat16) and acc == torch.float32):
        return
    raise invalid(
        f"{fn}: linear_cross_entropy supports float32 acc_dtype with float16/bfloat16 inputs, but "
        f"got {acc} acc_dtype and {dtype} inputs. (torch {torch.__version__}'s chunked path, which "
        f"takes this call, refuses these options); pass acc_dtype=None or {dtype}"
    )


def _describe(fields: dict) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


# ---------------------------------------------------------------- torch.distributed


def all_gather_single(t: torch.Tensor, gather_dim: int, group) -> torch.Tensor:
    """torch.distributed._functional_collectives.all_gather_single, all_gather_tensor on torch
    2.11 and older (the same collective; deprecated in 2.13). ``t`` contiguous."""
    import torch.distributed._functional_collectives as funcol

    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
    return gather(t, gather_dim, group)


def reduce_scatter_single(t: torch.Tensor, op: str, scatter_dim: int, group) -> torch.Tensor:
    """torch.distributed._functional_collectives.reduce_scatter_single (reduce_scatter_tensor on
    torch 2.11 and older)."""
    import torch.distributed._functional_collectives as funcol

    scatter = getattr(funcol, "reduce_scatter_single", None) or funcol.reduce_scatter_tensor
    return scatter(t, op, scatter_dim, group)
