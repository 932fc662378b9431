"""Backend.FUSED: the fused algorithms (backends/loops) on row kernels made of plain torch ops --
kernel.py (cross-entropy on a chunk of rows) and binary_kernel.py -- on the CPU (and on an
accelerator without Triton, in chunks sized for it). Loss and gradient in one pass,
gradient-sized memory only, deterministic.
"""

from __future__ import annotations

import math

import torch

from ..._options import LossOptions
from .. import Descriptor, loops
from ..common import compute_dtype
from . import binary_kernel, distill_kernel, kernel, log_prob_kernel, workers

# Crossovers (elements of the input) below which torch's own kernel beats this backend on the CPU,
# measured with benchmarks/bench_shapes.py. 2 threads, float32, fused/torch time (2026-11-23, the
# AMD EPYC VM):
#   forward+backward  0.52M elements 1.41, 1.05M 0.90, 2.05M 0.77, 16.4M 0.40
#   forward only      8.2M 1.51, 16.4M 0.55, 32.8M 0.50
# and forward+backward on the Intel Xeon VM (2026-12-05, `use_backend('fused')` against
# F.cross_entropy, min of 9 interleaved rounds): (800, 1000) 1.26, (1024, 1000) 1.27, (512, 2000)
# 1.31, (1536, 1000) 1.00, (2048, 1000) 0.59; K-dim (16, 64, 1024) 1.27, (4, 16, 128, 128) 2.13,
# (2, 32000, 16) 1.08-1.31: torch's passes stay in this CPU's cache up to ~1.5M elements (its time
# triples from 1.5M to 2M). The larger of the two machines' crossovers: below it crossent runs
# torch's kernel, so it is never the slower one there, and above it the fused path won on both.
TORCH_MAX_NUMEL = 3 << 19  # 1.57M
TORCH_MAX_NUMEL_NO_GRAD = 3 << 22  # 12.6M
# K-dimensional inputs (N, C, d1..dk) with a gradient: torch's softmax over C is one vectorized
# pass along the positions there, the fused kernel's ~10 strided ops are not. Fused/torch on the
# Intel VM (2026-12-05, min of 7): (8, 16, 128, 128) 2.1M 1.05, (8, 21, 128, 128) 2.8M 1.56,
# (4, 150, 64, 64) 2.5M 1.52, (8, 4, 256, 256) 2.1M 2.2; (12, 16, 128, 128) 3.1M 0.57,
# (12, 21, 128, 128) 4.1M 0.91, (16, 16, 128, 128) 4.2M 0.51, (8, 150, 64, 64) 4.9M 0.65,
# (16, 21, 128, 128) 5.5M 0.50-0.90.
KDIM_TORCH_MAX_NUMEL = 1 << 22  # 4.2M
# ... and at every size for K-dim inputs of at most this many classes, where the fused kernel lost
# at every size measured: (32, 2, 256, 256) 4.2M 2.6; (8, 4, 256, 256) 2.1M 2.2, (16, 4, 256, 256)
# 4.2M 1.52, (32, 4, 256, 256) 8.4M 1.05, (64, 4, 256, 256) 16.8M 1.10 (eight classes: 8.4M 1.03,
# 16.8M 0.59).
KDIM_TORCH_ANY_SIZE_CLASSES = 4
BINARY_TORCH_MAX_NUMEL = 1 << 22  # BCE-with-logits fused/torch: 0.41M 1.16, 1.05M 1.18, 4.2M 0.96
# linear_cross_entropy: at most this many logits (N * V) on the CPU, the composition F.linear +
# cross_entropy (its logits, 4 MiB in float32, are then smaller than the one 16 MiB chunk the fused
# path would allocate anyway). Fused/composed forward+backward, float32, D=128 (2026-11-23):
# 640 logits 2.44, 0.26M 1.07, 0.51M 1.11, 1.0M 1.03, 2.1M 0.83-0.97, 4.2M 0.94-1.01, 8.4M 0.60.
LINEAR_TORCH_MAX_LOGITS = 1 << 20

# The chunk's buffers (logits, gradient, temporaries) of the linear loss may take 7/8 of the bytes
# of the float32 weight gradient the call returns anyway, and at least MIN_BUDGET_BYTES. In float32
# that is 7D/8 rows whatever V is (448 at D=512), so the whole peak -- grad_W, grad_x, the chunk --
# stays under twice the weight gradient while N <= V/8. (torch 2.13's chunked F.linear_cross_entropy
# holds a second V x D buffer beside its small chunks: about the same bound, reached.)
# Why not fewer rows: every chunk streams W twice (the two products with W) and grad_W once
# (addmm's read-modify-write), 3 * 4 * V * D bytes, while its products do 6 * n * D * V FLOPs;
# on a CPU whose bandwidth is shared this per-chunk traffic is what costs. Measured side by side
# at N=2048, D=512, V=128256 on the 2-core CPU of docs/PERFORMANCE.md, the three chunked products
# over the three full-size ones (transposed logits): 384 rows 0.98x, 408 1.02x, 416 1.05x, 448
# 1.04-1.07x, 456 1.00x, 464 1.01x, 512 1.03x (run-to-run noise ~5%); with row-major logits 410
# rows were 1.09x and 448 1.11x. The floor keeps small layers (D*V tiny) from running in slivers.
MIN_BUDGET_BYTES = 16 << 20


def _torch_below(family: str, needs_grad: bool, device) -> int:
    if device.type != "cpu":
        return math.inf  # (no Triton there: torch's kernels, unless an option only crossent has)
    if family == "linear":
        return LINEAR_TORCH_MAX_LOGITS
    if family == "binary":
        return BINARY_TORCH_MAX_NUMEL
    return TORCH_MAX_NUMEL if needs_grad else TORCH_MAX_NUMEL_NO_GRAD


def chunk_rows(n: int, num_features: int, num_classes: int, dtype: torch.dtype, opts: LossOptions,
               *, soft: bool = False, class_weight: bool = False, budget_bytes: int | None = None,
               extra_buffers: int = 0) -> int:
    """Tokens per chunk of the linear loss: as many as fit in the budget, balanced.

    budget_bytes defaults to max(MIN_BUDGET_BYTES, 7/8 * V * D * 4) (float32; 8 for float64).
    Bytes per row: V times the logits (input dtype), the float32 gradient of 16-bit inputs, the tanh
    buffer of softcap, and the row math's chunk-sized temporaries (soft targets: t'*w and t'*w*z,
    the float32 copy of 16-bit probabilities; label smoothing with class weights: z*w), and
    ``extra_buffers`` more compute-dtype buffers (the entropy's exp, for log-probabilities).
    """
    a = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    if budget_bytes is None:
        budget_bytes = max(MIN_BUDGET_BYTES, num_classes * num_features * a * 7 // 8)
    per_elem = torch.empty((), dtype=dtype).element_size() + extra_buffers * a
    if dtype != compute_dtype(dtype):
        per_elem += a
    if opts.softcap is not None:
        per_elem += a
    if soft:
        per_elem += 2 * a + (a if class_weight or opts.label_smoothing > 0.0 else 0)
    elif class_weight and opts.label_smoothing > 0.0:
        per_elem += a
    return loops.balanced_rows(n, budget_bytes // max(1, per_elem * num_classes))


def distill_rows(n: int, num_features: int, teacher_features: int, num_classes: int, dtype: torch.dtype,
                 teacher_dtype: torch.dtype, opts, *, budget_bytes: int | None = None) -> int:
    """Tokens per chunk of the distillation losses: the budget of `chunk_rows` (7/8 of the
    student's float32 weight gradient, at least MIN_BUDGET_BYTES) over the bytes per class of a
    row: the student's logits, the teacher's, the row kernel's buffers and temporaries
    (`distill_kernel.bytes_per_logit`: about 16-28 bytes in float32 beside the 4 of each
    model's logits)."""
    a = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    if budget_bytes is None:
        budget_bytes = max(MIN_BUDGET_BYTES, num_classes * num_features * a * 7 // 8)
    per_elem = torch.empty((), dtype=dtype).element_size() + distill_kernel.bytes_per_logit(dtype, teacher_dtype, opts)
    return loops.balanced_rows(n, budget_bytes // max(1, per_elem * num_classes))


class _Buffers:
    """kernel.ce_chunk's reused buffers beside a chunk of logits: a float32 one for the exp and
    gradient of 16-bit logits, and the tanh of a softcap."""

    def __init__(self, numel, dtype, opts, device):
        acc = compute_dtype(dtype)
        self.work = torch.empty(numel, dtype=acc, device=device) if dtype != acc else None
        self.tanh = torch.empty(numel, dtype=acc, device=device) if opts.softcap is not None else None


def _chunk_view(buf, like):
    """buf seen with like's shape and strides (a chunk of the linear loss may be a transposed view)."""
    if buf is None:
        return None
    view = buf[: like.numel()]
    return view.view(like.t().shape).t() if like.dim() == 2 and not like.is_contiguous() else view.view(like.shape)


def _ce_chunk(x, tg, opts, *, grad=None, scale=1.0, buffers=None, x_is_scratch=False):
    """kernel.ce_chunk with the linear loss's reused buffers (laid out like the chunk)."""
    work = _chunk_view(buffers.work, x) if buffers is not None else None
    tanh = _chunk_view(buffers.tanh, x) if buffers is not None else None
    return kernel.ce_chunk(x, tg, opts, grad=grad, scale=scale, work=work, tanh_work=tanh,
                           x_is_scratch=x_is_scratch)


class _LogProbBuffers:
    """log_prob_kernel's reused buffers beside a chunk of logits: the compute-dtype work buffer
    (r, then log p and the gradient; not needed for float32 chunks the caller gives up:
    ``scratch``), the entropy's exp, the softcap's tanh."""

    def __init__(self, numel, dtype, opts, entropy, device, *, scratch):
        acc = compute_dtype(dtype)
        need_work = dtype != acc or not scratch
        self.work = torch.empty(numel, dtype=acc, device=device) if need_work else None
        self.exp = torch.empty(numel, dtype=acc, device=device) if entropy else None
        self.tanh = torch.empty(numel, dtype=acc, device=device) if opts.softcap is not None else None

    def views(self, like):
        return {k: _chunk_view(getattr(self, k), like) for k in ("work", "exp", "tanh")}


def _lp_forward(x, tg, opts, *, entropy, buffers, x_is_scratch=False):
    return log_prob_kernel.forward(x, tg, opts, entropy=entropy, x_is_scratch=x_is_scratch, **buffers.views(x))


def _lp_backward(x, tg, opts, m, log_s, entropy, g, h, *, grad, buffers):
    return log_prob_kernel.backward(x, tg, opts, m, log_s, entropy, g, h, grad=grad, **buffers.views(x))


# linear_log_probs' chunks (single-process and vocab-parallel) hold at least LP_MIN_ROWS tokens (while that is at most LP_FLOOR_BYTES of logits
# and buffers): `chunk_rows` gives small heads a 16 MiB budget, 64 tokens at V=32768 with the
# entropy, and there the products ran ~2.2x slower. Measured (2 cores, float32, forward+backward):
# log-probs + entropy, N=512, D=128, V=32768, 3 interleaved rounds, medians, /tmp bench under load
# ~35: 64 rows 14.97 s, 256 rows 6.46 s, 1024 rows 7.03 s; the torch composition 12.35 s.
# linear_cross_entropy (mean), N=512, 5 interleaved rounds, medians, load 11-17 (2026-12-05),
# the rule's rows -> 256: D=64 V=32000 128 -> 256 1.31x faster, D=128 V=32000 128 -> 256 1.44x,
# D=256 V=32000 176 -> 256 1.30x, D=64 V=128256 56 -> 256 1.36x; a second run (load 13-17):
# N=1024 D=64 V=32000 128 -> 256 1.18x, N=512 D=128 V=128256 104 -> 256 2.12x (a first 3-round
# run at load ~9 had N=1024 D=64 V=32000 at 0.64x, D=128 1.24x, D=256 0.92x: the only slower
# figure, not reproduced). Heads with 7D/8 >= 256 (float32: D >= 293; bfloat16, 7D/12: D >= 439) already
# get more rows from the budget: the floor changes nothing there (N=4096, V=128256: D=1024 824
# rows, D=4096 2048 rows, as before). linear_cross_entropy keeps `chunk_rows` (16 MiB): with the
# floor a patched Llama step (512 tokens, V=32000, D=32) held a 32 MiB chunk and its peak (42 MB)
# rose above half its logits (31 MB), the memory the fused loss promises
# (tests/integrations/test_hf_transformers.py); the speed-up above is given up there.
LP_MIN_ROWS = 256
LP_FLOOR_BYTES = 256 << 20


def floored_rows(n: int, num_features: int, num_classes: int, dtype: torch.dtype, opts: LossOptions,
                 **rule) -> int:
    """Tokens per chunk of the linear losses: `chunk_rows` (``rule``: its keywords), and at least
    LP_MIN_ROWS (balanced) while those fit in LP_FLOOR_BYTES."""
    rows = chunk_rows(n, num_features, num_classes, dtype, opts, **rule)
    if rows >= min(n, LP_MIN_ROWS):
        return rows
    cap = chunk_rows(n, num_features, num_classes, dtype, opts, **{**rule, "budget_bytes": LP_FLOOR_BYTES})
    return max(rows, min(loops.balanced_rows(n, LP_MIN_ROWS), cap))


def log_prob_rows(n: int, num_features: int, num_classes: int, dtype: torch.dtype, opts: LossOptions, *,
                  extra_buffers: int) -> int:
    """Tokens per chunk of the linear log-probabilities (this backend's and the vocab-parallel
    one's): `floored_rows` with ``extra_buffers`` chunk-sized compute-dtype buffers counted."""
    return floored_rows(n, num_features, num_classes, dtype, opts, extra_buffers=extra_buffers)


def _lp_linear_rows(n, d, v, dtype, opts, entropy):
    """`log_prob_rows` with the entropy's exp buffer counted."""
    return log_prob_rows(n, d, v, dtype, opts, extra_buffers=1 if entropy else 0)


def _lp_logits_rows(n, c, device):
    return max(1, min(n, kernel.chunk_elements(device) // max(c, 1)))


LOG_PROB_KERNELS = loops.LogProbKernels(
    forward=_lp_forward, backward=_lp_backward, buffers=_LogProbBuffers, linear_rows=_lp_linear_rows,
    logits_rows=_lp_logits_rows,
)

KERNELS = loops.RowKernels(
    ce_forward=kernel.ce_forward, ce_chunk=_ce_chunk, chunk_buffers=_Buffers,
    bce_forward=binary_kernel.bce_forward, chunk_rows=chunk_rows, row_major_logits=False,
    weight_grad_slice=0, name="fused", log_probs=LOG_PROB_KERNELS,
    distill_chunk=distill_kernel.distill_chunk, topk_chunk=distill_kernel.topk_chunk,
    distill_buffers=distill_kernel.Buffers, distill_rows=distill_rows, distill_alphas=distill_kernel.alphas,
)


def cross_entropy(input, target, weight, opts: LossOptions):
    with workers.serial_caller():  # (the per-sample ops beside the chunks: no barriers)
        return loops.cross_entropy(input, target, weight, opts, kernels=KERNELS)


nll_loss = loops.nll_loss


def binary_cross_entropy(input, target, weight, opts: LossOptions):
    return loops.binary_cross_entropy(input, target, weight, opts, kernels=KERNELS)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts: LossOptions):
    return loops.binary_cross_entropy_with_logits(input, target, weight, pos_weight, opts, kernels=KERNELS)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts: LossOptions):
    return loops.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, opts, kernels=KERNELS)


def log_probs(input, target, opts: LossOptions, entropy: bool):
    return loops.log_probs(input, target, opts, entropy, kernels=KERNELS)


def linear_log_probs(input, linear_weight, target, linear_bias, opts: LossOptions, entropy: bool):
    return loops.linear_log_probs(input, linear_weight, target, linear_bias, opts, entropy, kernels=KERNELS)
def linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
                             teacher_linear_bias, target, opts):
    return loops.linear_distillation_loss(input, linear_weight, teacher_input, teacher_linear_weight,
                                          linear_bias, teacher_linear_bias, target, opts, kernels=KERNELS)


def linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs, linear_bias, opts):
    return loops.linear_topk_distillation_loss(input, linear_weight, teacher_ids, teacher_log_probs,
                                               linear_bias, opts, kernels=KERNELS)


DESCRIPTOR = Descriptor(
    runs_on=lambda device: True,
    picked_on=lambda device: True,
    torch_below=_torch_below,
    kernels=KERNELS,
    compiled_linear=loops.make_op(KERNELS),
)
