"""Fresh large CPU tensors whose first touch is cheap.

A new N x C gradient is written once, and on Linux the kernel then faults its pages in one 4 KiB
page at a time: at 4096 x 32000 float32 (524 MB) that costs ~230 ms here, more than the softmax
arithmetic. Where transparent huge pages are in "madvise" mode (a common default), advising the
range with MADV_HUGEPAGE before the first write makes the kernel fault 2 MiB pages instead (~50 ms).
The advice is a hint: the memory stays ordinary, owned by torch's allocator, and on any other
system (or if the call fails) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_MADV_HUGEPAGE = 14
_HUGE = 1 << 21
_MIN_BYTES = 8 << 20  # below this, page faults are cheap and hugepages waste memory
_madvise = None
_unavailable = sys.platform != "linux"


def _load():
    global _madvise, _unavailable
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    except (OSError, AttributeError):
        _unavailable = True


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty(shape), advised to use huge pages when it is a large CPU tensor on Linux."""
    t = torch.empty(shape, dtype=dtype, device=device)
    nbytes = t.numel() * t.element_size()
    if _unavailable or t.device.type != "cpu" or nbytes < _MIN_BYTES:
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
