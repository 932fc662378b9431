"""The row kernels the fused algorithms of this package run on, as one value.

The algorithms (cross_entropy.py, binary.py, linear.py: autograd glue, 'mean' folding, the linear
loss's chunk loop) are the same on every device; what computes a chunk's loss and gradient is
pluggable: ``TORCH_OPS``, plain torch ops (kernel.py, binary_kernel.py; the CPU), or the Triton
kernels (backends/triton/ops.py; GPUs, and CPU tensors under Triton's interpreter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import binary_kernel, kernel


@dataclass(frozen=True)
class RowKernels:
    """ce_forward   (x (N, C[, D]), ChunkTarget, weight, opts, *, grad, scale) -> losses (N[, D])
    ce_chunk        (x (n, C), ChunkTarget, weight, weight_sum, opts, *, grad, scale, work,
                    tanh_work) -> (losses, lse)
    bce_forward     (x, y, w, pw, logits, opts, grad) -> per-element losses or their total
    grad_in_input_dtype  ce_chunk computes in float32 and writes a 16-bit gradient itself, rounded
                    once (no float32 buffer beside a 16-bit chunk)
    row_major_logits     the linear loss keeps its chunk of logits (n, V) row-major (else
                    transposed, for the CPU's BLAS: linear.py)
    lean_chunks     ce_chunk makes no chunk-sized temporaries (softcap, soft targets, smoothing
                    with weights): the linear loss's chunk budget counts the logits only
    name            how the custom op of linear_op.py names them (`register`, `by_name`)
    """

    ce_forward: Callable
    ce_chunk: Callable
    bce_forward: Callable
    grad_in_input_dtype: bool = False
    row_major_logits: bool = False
    lean_chunks: bool = False
    name: str = "torch"


_BY_NAME: dict[str, RowKernels] = {}


def register(kernels: RowKernels) -> RowKernels:
    _BY_NAME[kernels.name] = kernels
    return kernels


def by_name(name: str) -> RowKernels:
    return _BY_NAME[name]


TORCH_OPS = register(RowKernels(kernel.ce_forward, kernel.ce_chunk, binary_kernel.bce_forward))
