"""Backend.TRITON: crossent's fused losses with Triton kernels (GPUs; CPU tensors under
``TRITON_INTERPRET=1``, which is how CI tests them). Optional: ``pip install crossent[triton]``.

The algorithms are the fused backend's (backends/chunked/: the gradient computed in forward and
handed over in backward, 'mean' folded into it, the linear loss's token-chunk loop with its three
matrix products); the row kernels under them are Triton's (kernels.py, launched by ops.py):

  cross_entropy   one program per sample row over all rows at once: loss and gradient in one
                  kernel (rows up to ops.SINGLE_BLOCK_MAX classes read once; longer rows twice,
                  the second read mostly from L2); every option (class weights, ignore_index,
                  smoothing, probability targets, z_loss, softcap, K-dim, in place)
  nll_loss        the fused backend's gather / scatter (two small torch kernels: nothing to fuse)
  binary losses   one elementwise kernel, loss and gradient; per-program partial sums
  linear          per token chunk: logits Z = x_c W.T by cuBLAS (torch.mm), the Triton CE kernel
                  turning Z into its gradient in place (16-bit: computed in float32, written once in
                  the input dtype), then grad_x = G W and grad_W += G.T x_c by cuBLAS, grad_W
                  accumulated in float32. FLOPs 6 N D V ('none': 8 N D V). Extra memory beyond the
                  returned gradients: one (n, V) chunk in the input dtype, n V <= V D / 4 (a
                  quarter of the 16-bit weight gradient: n = 1024 at the Llama-3 head), the
                  float32 grad_W (V D) and a (8192, D) slice buffer for 16-bit inputs; never N x V.
                  Why cuBLAS and not tl.dot tiles with the softmax in the epilogue: the products are
                  ~95% of the work and cuBLAS runs them near the measured peak at these sizes
                  without tuning; the logits chunk costs ~5 passes of n V 16-bit values per chunk
                  (~2.6 ms of HBM traffic against the 26 ms floor of the Llama-3 head on an H100, an
                  estimate). A fused epilogue kernel (CCE, Liger CuTe) saves that traffic, but
                  needs tuning on a GPU this project has not had.

Every launch is asynchronous (no host sync); results are deterministic (each row reduced by one
program in a fixed order; totals by `common.deterministic_sum`; no atomics).
"""

from __future__ import annotations

from ... import _checks
from ..._options import LossOptions
from ..chunked import binary as _binary
from ..chunked import linear as _linear
from ..chunked.cross_entropy import cross_entropy as _cross_entropy
from ..chunked.cross_entropy import nll_loss as _nll_loss
from . import ops


def usable(device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``: Triton importable, and a GPU
    (or the CPU under TRITON_INTERPRET=1)."""
    if not ops.importable():
        return False
    return ops.interpreting() if device.type == "cpu" else device.type in ("cuda", "xpu")


def _require(t):
    if not usable(t.device):
        _checks.triton_unusable(t.device, ops.importable())
    return ops.row_kernels()


def cross_entropy(input, target, weight, opts: LossOptions):
    return _cross_entropy(input, target, weight, opts, kernels=_require(input))


def nll_loss(input, target, weight, opts: LossOptions):
    return _nll_loss(input, target, weight, opts)


def binary_cross_entropy(input, target, weight, opts: LossOptions):
    return _binary.binary_cross_entropy(input, target, weight, opts, kernels=_require(input))


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions):
    return _binary.binary_cross_entropy_with_logits(
        input, target, weight, pos_weight, opts, kernels=_require(input)
    )


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    return _linear.linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, opts, kernels=_require(input)
    )
