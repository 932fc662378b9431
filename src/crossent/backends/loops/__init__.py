"""The fused algorithms, shared by every fused backend: the autograd glue that computes the
gradient in forward and hands it over in backward, 'mean' folding, the linear loss's token-chunk
loop and its custom op for torch.compile. They run on a backend's row kernels (`RowKernels`:
backends/chunked's torch ops, backends/triton's Triton kernels) and never ask which one. Not a
backend: backends import it; it imports no backend."""

from .binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .cross_entropy import cross_entropy, nll_loss
from .kernels import RowKernels
from .linear import linear_cross_entropy
from .linear_chunks import balanced_rows
from .linear_op import make_op

__all__ = [
    "RowKernels", "balanced_rows", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "cross_entropy", "linear_cross_entropy", "make_op", "nll_loss",
]
