"""The backends and rule 1 of the routing rule (`_dispatch` has the whole rule): which backends
exist (``Backend``, each a module or folder under backends/ with a `DESCRIPTOR`), which one a call
is forced onto (``use_backend`` blocks, else the environment's ``CROSSENT_BACKEND``), and which
backend runs the fused algorithms on a device (``fused_for``). Split from `_dispatch` so that rule 2's
raw-argument predicates (`_to_torch`) and the rest of the rule (`_dispatch`) can both read it.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import os

from . import _checks, _forced


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


# Read once when crossent is imported, validated at the first call (`forced`): a per-call
# os.environ lookup costs more than torch's whole loss at 8 x 2.
ENV_BACKEND = os.environ.get("CROSSENT_BACKEND") or None


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
    return _parse(ENV_BACKEND, "CROSSENT_BACKEND") if ENV_BACKEND else None


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
