"""Backend.TRITON: crossent's fused losses with Triton kernels (GPUs; CPU tensors under
``TRITON_INTERPRET=1``, which is how CI tests them). Optional: ``pip install crossent[triton]``.

The algorithms are the shared fused ones (backends/loops/: the gradient computed in forward and
handed over in backward, 'mean' folded into it, the linear loss's token-chunk loop with its three
matrix products); the row kernels under them are Triton's (kernels.py, launched by ops.py):

  cross_entropy   one program per sample row over all rows at once: loss and gradient in one
                  kernel (rows up to ops.single_block_max classes read once; longer rows twice,
                  the second read mostly from L2); every option (class weights, ignore_index,
                  smoothing, probability targets, z_loss, softcap, K-dim, in place)
  nll_loss        the fused backend's gather / scatter (two small torch kernels: nothing to fuse)
  binary losses   one elementwise kernel, loss and gradient; per-program partial sums
  linear          per token chunk: logits Z = x_c W.T by cuBLAS (torch.mm), the Triton CE kernel
                  turning Z into its gradient in place (16-bit: computed in float32, written once in
                  the input dtype), then grad_x = G W and grad_W += G.T x_c by cuBLAS, grad_W
                  accumulated in float32 -- inside the product where torch has addmm's
                  out_dtype (CUDA), else through a (8192, D) 16-bit slice buffer
                  (loops/linear_chunks.py). FLOPs 6 N D V ('none': 8 N D V). Extra memory beyond
                  the returned gradients: one (n, V) chunk in the input dtype, n V <= V D / 4 (a
                  quarter of the 16-bit weight gradient: n = 1024 at the Llama-3 head; 16-bit
                  chunks at least 1024 rows) and the float32 grad_W (V D), whose first half of
                  rows lives in the returned 16-bit gradient's storage and is narrowed there in
                  place (loops/weight_grad.py): grad_W and its 16-bit result take 4 V D bytes
                  together at most (2.10 GB at the Llama-3 head; a .to() cast took 6 V D,
                  3.15 GB), 2 V D after; never N x V. Traffic and peak per head:
                  linear_cost.weight_grad_table() (docs/PERFORMANCE.md).
  torch.compile   cross_entropy, the binary losses and the linear loss ('mean'/'sum') as custom
                  ops (loops/cross_entropy_op.py, loops/binary_op.py, loops/linear_op.py): the
                  graph keeps these kernels.
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

import dataclasses

import torch

from ... import _checks
from ..._options import LossOptions
from .. import Descriptor, loops
from ..loops.binary_op import make_binary_ops
from ..loops.cross_entropy_op import make_ce_op
from ..loops.linear_chunks import MIN_FUSED_ROWS
from . import ops, ops_distill, ops_log_probs

# Off the CPU, inputs below this many elements go to torch's kernels even where Triton runs: there
# the call is bound by host overhead (an autograd.Function and a Triton launch cost tens of us of
# Python, torch's cross_entropy a few kernel launches). A conservative default, NOT measured: no
# GPU was available (benchmarks/bench_gpu.py measures the crossover on one; set it from there).
TRITON_MIN_NUMEL = 1 << 24  # 16.8M elements: 8192 x 2048
# linear_cross_entropy: at most this many logits (N * V), the composition F.linear + cross_entropy
# (the CPU's measured crossover, backends/chunked; on a GPU a guess on the safe side: NOT measured).
LINEAR_TORCH_MAX_LOGITS = 1 << 20
# The linear loss's chunk: a quarter of the 16-bit weight gradient, at least this many bytes -- at
# the Llama-3 head (V=128256, D=4096, bfloat16) 1024 rows, 256 MiB, a product still large enough
# for cuBLAS to run near its peak (a design choice: NOT measured, no GPU was available).
MIN_BUDGET_BYTES = 16 << 20


def usable(device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``: Triton importable, and a GPU
    (or the CPU under TRITON_INTERPRET=1)."""
    if not ops.importable():
        return False
    return ops.interpreting() if device.type == "cpu" else device.type in ("cuda", "xpu")


def _torch_below(family: str, needs_grad: bool, device) -> int:
    if device.type == "cpu":
        return 0  # (only ever forced there)
    return LINEAR_TORCH_MAX_LOGITS if family == "linear" else TRITON_MIN_NUMEL - 1


def chunk_rows(n: int, num_features: int, num_classes: int, dtype: torch.dtype, opts: LossOptions,
               *, soft: bool = False, class_weight: bool = False) -> int:
    """Tokens per chunk of the linear loss: the chunk's logits take a quarter of the weight
    gradient's bytes in the input dtype (the kernel makes no chunk-sized temporaries); 16-bit
    chunks at least MIN_FUSED_ROWS tokens, so that the float32 accumulation of grad_W inside the
    product stays behind its FLOPs (loops/linear_chunks.py)."""
    size = torch.empty((), dtype=dtype).element_size()
    budget = max(MIN_BUDGET_BYTES, num_classes * num_features * size // 4)
    rows = budget // max(1, size * num_classes)
    if size == 2:
        rows = max(rows, MIN_FUSED_ROWS)
    return loops.balanced_rows(n, rows)


def _lp_linear_rows(n, d, v, dtype, opts, entropy):
    return chunk_rows(n, d, v, dtype, opts)


# (the log-prob kernels: kernels_log_probs.py, launched by ops_log_probs.py; the distillation
# kernels: kernels_distill.py, launched by ops_distill.py)
KERNELS = dataclasses.replace(
    ops.row_kernels(chunk_rows), log_probs=ops_log_probs.log_prob_kernels(_lp_linear_rows),
    distill_chunk=ops_distill.distill_chunk, topk_chunk=ops_distill.topk_chunk,
    distill_buffers=ops_distill.Buffers, distill_rows=ops_distill.distill_rows,
)


def _require(t):
    if not usable(t.device):
        _checks.triton_unusable(t.device, ops.importable())


def cross_entropy(input, target, weight, opts: LossOptions):
    _require(input)
    return loops.cross_entropy(input, target, weight, opts, kernels=KERNELS)


nll_loss = loops.nll_loss


def binary_cross_entropy(input, target, weight, opts: LossOptions):
    _require(input)
    return loops.binary_cross_entropy(input, target, weight, opts, kernels=KERNELS)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions):
    _require(input)
    return loops.binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts, kernels=KERNELS)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    _require(input)
    return loops.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts, kernels=KERNELS)


def log_probs(input, target, opts: LossOptions, entropy: bool):
    _require(input)
    return loops.log_probs(input, target, opts, entropy, kernels=KERNELS)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool):
    _require(input)
    return loops.linear_log_probs(input, linear_weight, target, linear_bias, opts, entropy, kernels=KERNELS)
def linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
                             teacher_linear_bias, target, opts):
    _require(input)
    return loops.linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight,
                                          linear_bias, teacher_linear_bias, target, opts, kernels=KERNELS)


def linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs, linear_bias, opts):
    _require(input)
    return loops.linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs,
                                               linear_bias, opts, kernels=KERNELS)


_compiled_linear = loops.make_op(KERNELS)
_compiled_ce = make_ce_op(KERNELS)
_compiled_binary = make_binary_ops(KERNELS)


def _ce_op(input, target, weight, opts: LossOptions):
    _require(input)
    return _compiled_ce(input, target, weight, opts)


def _binary_op(input, target, weight, pos_weight, opts: LossOptions, *, logits: bool):
    _require(input)
    return _compiled_binary(input, target, weight, pos_weight, opts, logits=logits)


def _linear_op(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    _require(input)
    return _compiled_linear(input, linear_weight, target, linear_bias, weight, opts)


DESCRIPTOR = Descriptor(
    runs_on=usable,
    picked_on=lambda device: device.type != "cpu" and usable(device),
    torch_below=_torch_below,
    kernels=KERNELS,
    compiled_linear=_linear_op,
    compiled_cross_entropy=_ce_op,
    compiled_binary=_binary_op,
)
