"""The float32 weight gradient of a 16-bit linear head, finished inside the storage that will hold
its 16-bit result: the accumulator and the returned gradient are never alive side by side.

A 16-bit head's grad_W accumulates in float32 over the token chunks (linear_chunks.py) and is
returned in the weight's dtype. Accumulated in one (V, D) float32 tensor and cast with ``.to()``,
the float32 tensor (4 V D bytes) and its copy (2 V D) are alive together: 6 V D bytes, 3.15 GB at
the Llama-3 head (V=128256, D=4096). Here the accumulator is two row blocks::

    head  rows [0, V//2)   float32, a dtype view of the first 4 (V//2) D bytes of the result's
                           storage R (the (V, D) 16-bit gradient that is returned: 2 V D bytes)
    tail  rows [V//2, V)   float32, a tensor of its own

and `finish` turns them into R in place: the head's values are narrowed to 16 bits front to back
(element i moves from bytes [4i, 4i+4) to [2i, 2i+2): block [a, 2a) is written over bytes
[2a, 4a), which held elements [a/2, a) -- already narrowed -- and reads [4a, 8a): disjoint, so
each block is one ordinary copy; the first FIRST_BLOCK elements go through a small temporary),
then the tail is narrowed into R's rows [V//2, V) (bytes [2 (V//2) D, 2 V D), whose float32
values were narrowed before) and freed. Each element is rounded once by the same ``copy_`` as
``.to()`` (round to nearest even): the result is bit for bit ``accumulator.to(dtype)``.

Memory (`memory`): 4 V D bytes while accumulating (as one tensor would), at most 4 V D +
2 FIRST_BLOCK while finishing (was 6 V D), 2 V D after (R alone). Traffic of the finish: one
read of the float32 values and one write of the 16-bit ones, as ``.to()``. The products that
accumulate into the blocks are the chunk's G.T @ x_c cut at row V//2 (linear_chunks.py): each
element is the same float32 sum of the same products, by the same kind of product.
"""

from __future__ import annotations

import math

import torch

from .. import _memory

# Head elements narrowed through a temporary (2 MiB of 16-bit values): the first block's output
# bytes overlap its own input. After it, blocks double: log2(V D / 2 / FIRST_BLOCK) + 1 copies
# (9 at the Llama-3 head), each a plain copy kernel over disjoint bytes.
FIRST_BLOCK = 1 << 20


def narrows(weight_dtype: torch.dtype, acc: torch.dtype) -> bool:
    """Whether a gradient accumulated in ``acc`` is returned in a dtype of half its size (a 16-bit
    weight, a float32 accumulator): then it is kept as a `SplitWeightGrad`."""
    size = lambda t: torch.empty((), dtype=t).element_size()
    return 2 * size(weight_dtype) == size(acc)


class SplitWeightGrad:
    """A (V, *rest) float32 weight gradient as row blocks ``[(v0, v1, tensor)]`` whose first block
    lives in the storage of the (V, *rest) ``dtype`` result (module docstring)."""

    def __init__(self, shape, dtype: torch.dtype, acc: torch.dtype, device: torch.device):
        v, rest = shape[0], tuple(shape[1:])
        row = math.prod(rest)
        self.dtype, self.acc = dtype, acc
        self.result = _memory.empty(tuple(shape), dtype, device)
        va = v // 2  # 4 va row <= 2 v row: the head's float32 values fit R's bytes
        ratio = torch.empty((), dtype=acc).element_size() // self.result.element_size()
        head = self.result.view(-1)[: ratio * va * row].view(acc).view((va,) + rest)
        tail = _memory.empty((v - va,) + rest, acc, device)
        self.blocks = [(0, va, head), (va, v, tail)]

    def tensors(self) -> tuple:
        """The blocks' float32 tensors (what backward scales in place)."""
        return tuple(t for _, _, t in self.blocks)

    def head_views(self, shape, j: int) -> list:
        """The blocks of head j of a (V, P, D) weight: ``[(v0, v1, (v1 - v0, D) view)]``."""
        return [(v0, v1, t.view((v1 - v0,) + tuple(shape[1:]))[:, j]) for v0, v1, t in self.blocks]

    def finish(self, scaled: tuple | None = None) -> torch.Tensor:
        """The gradient in the weight's dtype. ``scaled``: the blocks' tensors after backward's
        scaling -- the blocks themselves (scaled in place): narrowed into the result's storage,
        the tail freed; copies (a gradient kept for a second backward): narrowed into a fresh
        tensor, the blocks untouched."""
        scaled = self.tensors() if scaled is None else scaled
        if any(s is not t for s, t in zip(scaled, self.tensors())):
            out = torch.empty(self.result.shape, dtype=self.dtype, device=self.result.device)
            for (v0, v1, _), s in zip(self.blocks, scaled):
                out[v0:v1].copy_(s)
            return out
        (_, va, head), (_, _, tail) = self.blocks
        flat = self.result.view(-1)
        narrow_in_place(head.reshape(-1), flat[: head.numel()])
        flat[head.numel():].view(tail.shape).copy_(tail)
        self.blocks = []  # (the tail is freed; the head's storage now holds 16-bit values)
        return self.result


def narrow_in_place(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst[i] = src[i] for every i, where dst (16-bit, flat) starts at src's (float32, flat) first
    byte: front to back in doubling blocks, each reading bytes that no earlier write touched and
    writing only bytes whose values were already read (module docstring)."""
    n = src.numel()
    if n == 0:
        return
    first = min(n, FIRST_BLOCK)
    dst[:first].copy_(src[:first].to(dst.dtype))  # (the output overlaps this block's own input)
    a = first
    while a < n:
        b = min(2 * a, n)
        dst[a:b].copy_(src[a:b])
        a = b


def memory(v: int, d: int, elem_size: int = 2, acc_size: int = 4) -> dict:
    """Bytes of a (V, D) weight gradient of ``elem_size``-byte weights accumulated in
    ``acc_size``-byte floats: ``accumulating`` (the blocks), ``finishing`` (the peak of `finish`:
    the blocks plus the first block's temporary), ``held`` (the result), and ``finishing_to``, the
    peak of one accumulator cast by ``.to()`` (what this replaces). The arithmetic of __init__ and
    `finish` (tests/backends/loops/test_weight_grad.py checks it against the tensors' storage)."""
    va = v // 2
    result = elem_size * v * d  # (holds the head's acc_size * va * d bytes)
    tail = acc_size * (v - va) * d
    temp = elem_size * min(va * d, FIRST_BLOCK)
    return {"accumulating": result + tail, "finishing": result + tail + temp, "held": elem_size * v * d,
            "finishing_to": acc_size * v * d + elem_size * v * d}
