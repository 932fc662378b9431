"""Large CPU buffers whose first touch is paid once, not every training step.

A new N x C gradient is written once per call, and on Linux the kernel faults a fresh allocation's
pages in one at a time and zeroes each: glibc returns every allocation above 32 MiB to the system
when it is freed (its mmap threshold), so a training loop that calls the loss once per step pays
the first touch of the whole gradient in every step. Measured here at 4096 x 32000 float32 (524 MB,
2 threads): 180-280 ms per fresh buffer,
about as much as the softmax arithmetic; in the training-loop benchmark's step crossent's loss took
679 ms with a fresh buffer and 556 ms with a reused one (torch 1155 ms, one run, load ~4).

So the large CPU buffers crossent allocates (the gradient it hands to autograd, the linear loss's
chunk buffers and gradient accumulators) come from a small cache: a buffer whose storage nobody
but the cache references any more -- autograd released the gradient, the optimizer step is over,
``zero_grad(set_to_none=True)`` dropped ``.grad`` -- is handed out again for a request of exactly
its size. Liveness is the storage's reference count (``torch._C._storage_Use_Count``, what
torch._inductor's CUDA-graph trees use for the same question): any tensor, view, ``.grad``,
autograd-saved tensor or numpy array of the buffer keeps it out of reuse. The values are never
stale: every user of this module writes every element before reading it (as with torch.empty).

The cache holds at most ``MAX_CACHED`` buffers (least recently used free one evicted); its memory
is what one training step needed anyway, kept between steps as torch's CUDA caching allocator
keeps device memory. `crossent.empty_cache()` (or ``CROSSENT_CACHE_BUFFERS=0`` in the environment)
gives it back. A fresh buffer is also advised to use transparent huge pages where they are in
"madvise" mode (a hint: ~2x faster first touch when the kernel has free 2 MiB pages, a stall for
compaction when it has not; paid once per cached buffer, and fewer TLB misses on every later pass).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

import torch

_MADV_HUGEPAGE = 14
_HUGE = 1 << 21
# Below this the first touch is cheap (a few ms) and caching would only hold memory: glibc keeps
# freed blocks under its 32 MiB mmap threshold for reuse anyway.
_MIN_BYTES = 8 << 20
# A step needs at most four large buffers at once (the linear loss: chunk logits, weight part,
# grad_x, grad_W); two losses per step, or two shapes alternating, also find theirs.
MAX_CACHED = 4
_ENABLED = os.environ.get("CROSSENT_CACHE_BUFFERS", "1") != "0"

_madvise = None
_no_madvise = sys.platform != "linux"
_use_count = getattr(torch._C, "_storage_Use_Count", None)


class _Cached:
    """A cached buffer and what "nobody else holds it" looks like: the storage's C++ reference count
    and its Python object's reference count as they were when the cache alone held it (torch
    versions differ: 2.6 counts 2 and 2, 2.11 counts 2 and 3). The Python count matters because
    from torch 2.11 on, a caller keeping only ``grad.untyped_storage()`` adds no C++ reference."""

    __slots__ = ("flat", "storage", "cdata", "base")

    def __init__(self, flat: torch.Tensor):
        self.flat = flat  # uint8, owns the storage; nothing else references it yet
        self.storage = flat.untyped_storage()  # the same Python object every later call returns
        self.cdata = self.storage._cdata
        self.base = self._counts()

    def _counts(self) -> tuple[int, int]:
        return _use_count(self.cdata), sys.getrefcount(self.storage)

    def free(self) -> bool:
        return self._counts() == self.base


_cache: list[_Cached] = []  # least recently used first
_lock = threading.Lock()


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor like torch.empty(shape): for a large CPU tensor, a free
    cached buffer of exactly its size where there is one, else a fresh one advised to huge pages
    (and cached). The caller must write every element before reading any."""
    device = torch.device(device)
    numel = 1
    for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)):
        numel *= s
    nbytes = numel * dtype.itemsize
    if device.type != "cpu" or nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    if not (_ENABLED and _use_count is not None):
        return _advised(torch.empty(shape, dtype=dtype, device=device), nbytes)
    with _lock:  # take-and-hold is one step: two threads never get one buffer
        for i, c in enumerate(_cache):
            if c.flat.numel() == nbytes and c.free():
                _cache.append(_cache.pop(i))
                return c.flat.view(dtype).view(shape)
        entry = _Cached(_advised(torch.empty(nbytes, dtype=torch.uint8), nbytes))
        _remember(entry)
        return entry.flat.view(dtype).view(shape)


def _remember(entry: _Cached) -> None:
    if len(_cache) >= MAX_CACHED:
        victim = next((i for i, c in enumerate(_cache) if c.free()), None)
        if victim is None:
            return  # all in use: this one is not cached (it is freed with its last user)
        del _cache[victim]
    _cache.append(entry)


def empty_cache() -> None:
    """Drop the cache's references to its buffers: those nobody else holds are freed now, the others
    when their last user lets go."""
    with _lock:
        _cache.clear()


def cached_bytes() -> int:
    """Bytes of buffers the cache holds (free or in use)."""
    with _lock:
        return sum(c.flat.numel() for c in _cache)


def _load() -> None:
    global _madvise, _no_madvise
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    except (OSError, AttributeError):
        _no_madvise = True


def _advised(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    """t, its whole 2 MiB pages advised MADV_HUGEPAGE (before anything touched them)."""
    if _no_madvise:
        return t
    if _madvise is None:
        _load()
        if _madvise is None:
            return t
    start = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
    end = (t.data_ptr() + nbytes) & ~(_HUGE - 1)
    if end > start:
        _madvise(start, end - start, _MADV_HUGEPAGE)  # a hint: failure changes nothing
    return t
