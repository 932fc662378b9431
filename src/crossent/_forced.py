"""The backend a ``use_backend`` block forces, per thread and asyncio task.

A block forces the calls of its own thread or task only (a ContextVar: new threads start unforced,
each asyncio task runs in a copy of its creator's context), and nested blocks restore the outer
one's value on exit, exceptions included. Only the dispatching thread reads it: the chunk workers
(backends/chunked/workers.py) run row kernels, never the rule.

torch.compile: Dynamo can neither trace ContextVar.get nor guard on per-thread state (a
threading.local read is traced without a guard: a stale graph), but it guards on module globals.
So `active` lists every block open in any thread or task, oldest first; `here` reads it first
(one global read when nothing is forced anywhere: the small call's fast path) and, while Dynamo
traces, reads the ContextVar through a function whose result Dynamo keeps as a constant. A graph
traced under some blocks is then reused only under the same blocks: exact for one thread or task.
Threads that run one compiled function while each forces a different backend at the same moment
may share a graph traced for another's (every backend gives torch's values).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

import torch

_var: contextvars.ContextVar = contextvars.ContextVar("crossent_forced_backend", default=None)
active: tuple = ()  # the values of every open block, in any thread or task, oldest first
_entries: list[tuple[object, object]] = []
_seen: tuple = ()  # every value ever forced, in first-use order (for the traced read's index)
_lock = threading.Lock()
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


@contextlib.contextmanager
def block(value):
    """Force ``value`` in this thread or task for the ``with`` block (``None`` lifts an outer
    block)."""
    global active, _seen
    entry = (object(), value)
    with _lock:
        _entries.append(entry)
        active = tuple(e[1] for e in _entries)
        if value not in _seen:
            _seen = (*_seen, value)
    token = _var.set(value)
    try:
        yield
    finally:
        _var.reset(token)
        with _lock:
            _entries.remove(entry)
            active = tuple(e[1] for e in _entries)


def _assume_constant_result(fn):
    """torch.compiler.assume_constant_result(fn) without its ``import torch._dynamo`` (which would
    import Dynamo, and Triton where installed, with crossent): that decorator only sets this
    attribute, which Dynamo reads when it meets ``fn``. Should a torch stop honouring it, Dynamo
    meets ContextVar.get and fullgraph compiles fail (tests/test_dispatch_forced.py), nothing
    silent."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _traced_index() -> int:
    """This context's value as its index in _seen (-1: none): a constant Dynamo can keep (an
    enum member itself comes back from it as a plain string)."""
    value = _var.get()
    return -1 if value is None else _seen.index(value)


def here():
    """The value of this thread's or task's innermost block; None without one."""
    if not active:
        return None
    if _compiling is not None and _compiling():
        i = _traced_index()
        return None if i < 0 else _seen[i]
    return _var.get()
