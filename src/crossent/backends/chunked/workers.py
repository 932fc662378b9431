"""Chunks of rows spread over single-threaded workers: one long parallel region per call.

Why: the torch-op kernel runs ~5 full-chunk ops per chunk of ~1M elements, and each op is one
OpenMP parallel region that ends at a barrier where every thread waits for the slowest. At
4096 x 32000 that is ~600 regions per call. On a quiet machine the barriers cost little; on a busy
one (a data loader, a second job: other runnable threads than ours) one descheduled thread stalls
the others at every barrier, and the loss took 1.5-4.4x torch's time, whose kernel runs a few long
regions (issue 25; benchmarks/bench_training_loop.py measures it). Here each of the caller's
intra-op threads becomes a worker that takes whole chunks from a shared queue and runs their ops
with one thread: nothing waits until the last chunk, and a descheduled worker only takes fewer
chunks. Results are bitwise those of the serial loop: every chunk's reductions already run in a
fixed, thread-independent order (`rows.row_sum`, `common.deterministic_sum`).

How a worker runs its ops with one thread without touching the caller's setting: OpenMP's thread
count is a per-thread setting (`omp_set_num_threads` from a thread other than the one that set the
process default changes that thread only), so each worker sets its own to 1 after torch's own
per-thread initialisation. torch.set_num_threads is not used: it also changes the default that new
threads start from. Where the OpenMP runtime cannot be found, or the caller runs one thread, the
chunks run in the calling thread as before.

The caller's own ops beside the chunks (per-sample targets, the 'mean' denominator, the total) run
on one thread inside `serial_caller`: they too were parallel regions with barriers.

On a quiet CPU the workers cost something where a call has few chunks (4096 x 1000, four chunks:
1.01-1.04x torch's time on the workers, 0.75x with the chunks in the calling thread), and under
load they are what saves it (a (16, 21, 128, 128) step: 1.15-4.69x torch's time in the calling
thread, 0.62-0.86x on the workers). So the cross-entropy kernel asks for the workers only from
MIN_CHUNKS chunks, or when `contended` says other runnable threads kept the calling thread from a
core since its previous look (MIN_CHUNKS and BUSY_WAIT_SHARE below have the measurements).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_omp_set_num_threads: Callable[[int], None] | None = None
_omp_checked = False


def _openmp_runtime_paths() -> list[str]:
    """The OpenMP runtimes loaded in this process (torch's libgomp/libomp/libiomp5)."""
    names = ("libgomp", "libomp", "libiomp5")
    found: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(" ", 1)[-1].strip()
                if any(n in os.path.basename(path) for n in names) and path not in found:
                    found.append(path)
    except OSError:  # not Linux: torch's own folder holds its runtime
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        if os.path.isdir(lib):
            found = [os.path.join(lib, f) for f in sorted(os.listdir(lib)) if any(f.startswith(n) for n in names)]
    return found


def _resolve_omp():
    """torch's own omp_set_num_threads. Every OpenMP runtime loaded is a candidate, torch's first
    (scikit-learn, SciPy load copies of libgomp of their own; setting theirs changes nothing for
    torch's ops); the one kept is the first that changes torch's count, tried in a throwaway
    thread, whose setting is its own: the caller's and the other runtimes' stay untouched."""
    global _omp_set_num_threads, _omp_checked
    _omp_checked = True
    if "OpenMP" not in torch.__config__.parallel_info():
        return
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    paths = sorted(_openmp_runtime_paths(), key=lambda p: not p.startswith(torch_lib))
    found = []
    for path in paths:
        try:
            fn = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = None
        found.append(fn)
    chosen = []

    def probe():
        torch.get_num_threads()  # (torch's per-thread setup first)
        for fn in found:
            target = torch.get_num_threads() + 1
            fn(target)
            if torch.get_num_threads() == target:
                chosen.append(fn)
                return

    thread = threading.Thread(target=probe, name="crossent-omp-probe")
    thread.start()
    thread.join()
    _omp_set_num_threads = chosen[0] if chosen else None


def _set_own_threads(n: int) -> bool:
    """This thread's OpenMP thread count (not the process default) to n; False if torch's count
    did not follow."""
    _omp_set_num_threads(n)
    return torch.get_num_threads() == n


def _become_single_threaded() -> None:
    """Pool initializer: torch's per-thread setup first (it would reset the count later), then
    one OpenMP thread for this worker, and no autograd graph (the kernels compute gradients
    explicitly; grad mode is per thread and on by default)."""
    torch.get_num_threads()
    _set_own_threads(1)
    torch.set_grad_enabled(False)


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads: a new pool is made on first use.
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _workers(threads: int) -> ThreadPoolExecutor | None:
    global _pool, _pool_size
    with _lock:
        if not _omp_checked:
            _resolve_omp()
        if _omp_set_num_threads is None:
            return None
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="crossent-chunks",
                                       initializer=_become_single_threaded)
            _pool_size = threads
        return _pool


@contextlib.contextmanager
def serial_caller():
    """The block's own torch ops in the calling thread run on one thread, while `map_chunks` inside
    still spreads its chunks over as many workers as the caller had threads.

    Why: beside its chunks a loss runs per-sample ops (targets, the target's logit, the 'mean'
    denominator, the total): a few hundred thousand elements for a (N, C, d1..dk) input, which
    torch splits across its threads, each op one parallel region ending at a barrier. On a busy
    CPU one descheduled thread stalls the others at each barrier: at (16, 21, 128, 128) with ~25
    runnable processes on 2 cores those ops took ~180 ms of a ~440 ms call (the chunks ~170 ms),
    against ~1 ms alone on one thread. Restored on exit, exceptions included. Does nothing where
    map_chunks would run in the calling thread anyway (one thread, no OpenMP runtime found, a
    worker, an active torch function/dispatch mode)."""
    threads = torch.get_num_threads()
    if threads == 1 or _is_worker() or _modes_active() or getattr(_caller, "threads", None) is not None:
        yield
        return
    with _lock:
        if not _omp_checked:
            _resolve_omp()
    if _omp_set_num_threads is None:
        yield
        return
    if not _set_own_threads(1):
        _set_own_threads(threads)
        yield
        return
    _caller.threads = threads
    try:
        yield
    finally:
        _caller.threads = None
        _set_own_threads(threads)


_caller = threading.local()  # serial_caller's record of the caller's own thread count


def in_calling_thread(fn: Callable[[T, dict], R], items: Sequence[T]) -> list[R]:
    """map_chunks' items one after another in the calling thread, with one scratch dict."""
    scratch: dict = {}
    return [fn(item, scratch) for item in items]


# Fewer chunks than this run in the calling thread, with all its threads, unless the CPU is
# contended (`contended`). Measured 2026-12-05, 2-core VM, forward+backward float32, ratio to torch
# eager, workers / calling thread: quiet, 4 chunks of 1M elements (4096 x 1000) 0.67 / 0.44 on
# fresh inputs and 1.01-1.04 / 0.75 on a reused one, (16, 21, 128, 128) ~6 chunks 0.76 / 0.65,
# 16 chunks 0.46 / 0.43, 32 0.45 / 0.40, 128 (4096 x 32000) 0.40 / 0.41; under k = 1, 2, 4 busy
# processes the (16, 21, 128, 128) training step in the calling thread took 1.15x / 1.52x / 4.69x
# torch's time (bench_training_loop), with the workers 0.62x / 0.86x / 0.75x.
MIN_CHUNKS = 16
# The share of wall time the calling thread spent waiting for a core (runnable, not running) since
# the previous look, above which the CPU counts as contended. Measured 2026-12-05 (2-core VM,
# 4096 x 1000 forward+backward calls for 2 s, k spinning processes beside them): chunks in the
# calling thread 0.000 / 0.30 / 0.48 / 0.63 at k = 0 / 1 / 2 / 4; on the workers (the calling
# thread mostly sleeps on them then) 0.023 / 0.12 / 0.20 / 0.17. 0.05 parts both routes' quiet
# figures from both routes' loaded ones.
BUSY_WAIT_SHARE = 0.05
_SCHEDSTAT = "/proc/thread-self/schedstat"
_last_look = threading.local()  # per thread: (time.monotonic(), run-queue wait in ns) at its previous look


def _run_queue_wait_ns() -> int | None:
    """This thread's total time waiting on a run queue (Linux schedstat's second field), or None."""
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def contended() -> bool:
    """Whether other runnable threads kept this thread from a core since its previous look: the
    share of the wall time between two looks that it spent runnable but waiting (Linux schedstat;
    ~10 us to read). Where the count is missing, True (the workers, which lose little where they
    are not needed). The first look of a thread counts as quiet."""
    waited = _run_queue_wait_ns()
    if waited is None:
        return True
    now = time.monotonic()
    then, before = getattr(_last_look, "value", (now, waited))
    _last_look.value = (now, waited)
    return (waited - before) * 1e-9 > BUSY_WAIT_SHARE * max(now - then, 1e-6)


def map_chunks(fn: Callable[[T, dict], R], items: Sequence[T], device: torch.device, *,
               min_items: int = 2) -> list[R]:
    """[fn(item, scratch) for item in items], the items spread over single-threaded workers, one per
    intra-op thread of the caller; ``scratch`` is a dict private to one worker for this call (for
    its reusable buffers). Runs in the calling thread where workers cannot help: one item, one
    thread, a non-CPU device, no OpenMP runtime found, a call from a worker itself, or a torch
    function/dispatch mode active in the caller (modes are per thread: a FlopCounterMode or a
    debugging mode must see every op), or fewer than ``min_items`` items on a CPU that is not
    `contended` (then with all the caller's threads, also inside `serial_caller`). Workers run in
    the caller's inference mode."""
    caller_threads = getattr(_caller, "threads", None)
    threads = caller_threads or torch.get_num_threads()
    pool = None
    if (device.type == "cpu" and len(items) > 1 and threads > 1 and not _is_worker()
            and not _modes_active() and (len(items) >= min_items or contended())):
        pool = _workers(threads)
    if pool is None:
        if caller_threads is None:
            return in_calling_thread(fn, items)
        _set_own_threads(caller_threads)  # (serial_caller left this thread one)
        try:
            return in_calling_thread(fn, items)
        finally:
            _set_own_threads(1)
    results: list = [None] * len(items)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)

    inference = torch.is_inference_mode_enabled()  # (inference_mode(False) would enable grad)

    def drain() -> None:
        scratch: dict = {}
        with torch.inference_mode() if inference else contextlib.nullcontext():
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                results[i] = fn(items[i], scratch)

    futures = [pool.submit(drain) for _ in range(min(threads, len(items)))]
    errors = [f.exception() for f in futures]  # waits for all: no worker still writes after return
    for e in errors:
        if e is not None:
            raise e
    return results


def _modes_active() -> bool:
    return torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0


def _is_worker() -> bool:
    return threading.current_thread().name.startswith("crossent-chunks")
