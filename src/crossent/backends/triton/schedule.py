"""How the Triton kernels are laid over the device: the persistent grid of the long-row CE kernel,
the vector width of a row's accesses, and the facts of the device both depend on.

Long rows (C > ops.SINGLE_BLOCK_MAX) are read twice: pass 1 (max, sum of exps, the loss) and
pass 2 (the gradient) right after it in the same program. The second read is an L2 hit only if
the rows in flight -- one per program -- fit the L2 while the gradient streams past it, so the
grid is persistent: at most PROGRAMS_PER_SM programs per SM, and no more than L2_SHARE of the L2
in rows (the pass-1 loads ask the L2 to keep their lines: evict_last; the gradient's stores and
pass 2's loads ask the opposite). Arithmetic for an H200 (132 SMs, 60 MB L2): Llama-3 rows
(128256 classes) in bfloat16 are 251 KiB, 132 of them 33 MB: every SM busy, rows in L2, the two
passes cost one HBM read and one write. In float32 (501 KiB) only 90 fit L2_SHARE: 90 programs.
Whether 90 programs with L2 hits beat 132 with some misses is for benchmarks/bench_gpu.py's
schedule sweep to say (``MAX_PROGRAMS`` overrides the rule; no GPU has been lent yet).

Under TRITON_INTERPRET (CPU tensors) the device is modelled as that H200, so the tests run the
same schedule code; ``MAX_PROGRAMS`` lets them make one program stream several rows.
"""

from __future__ import annotations

import torch

PROGRAMS_PER_SM = 1
# The share of the L2 that the rows in flight may fill: the rest holds the target, weight and
# scale lines and absorbs the streaming stores, which pass through the L2 on their way out.
L2_SHARE = 0.75
# Never fewer programs than this fraction of the SMs: below it a program per SM cannot keep
# enough loads in flight to approach the bandwidth, L2 hits or not (a design bound, not measured).
MIN_SM_SHARE = 0.5
# Overrides the rule when set (tests; the benchmark's schedule sweep).
MAX_PROGRAMS: int | None = None
# The device the interpreter stands for: an H200 (132 SMs, 60 MB of L2, as PyTorch reports it).
INTERPRETED = (132, 60 * 1000 * 1000)
# The gradient scale kernel's grid: a few programs per SM (each returns at once when the factor
# is 1; otherwise they stream the gradient).
SCALE_PROGRAMS_PER_SM = 4

_FACTS: dict = {}


def device_facts(device: torch.device) -> tuple[int, int]:
    """(SMs, L2 bytes) of ``device`` (read once per device; no sync)."""
    key = (device.type, device.index)
    if key not in _FACTS:
        if device.type == "cuda":
            p = torch.cuda.get_device_properties(device)
            _FACTS[key] = (p.multi_processor_count, getattr(p, "L2_cache_size", INTERPRETED[1]))
        else:
            _FACTS[key] = INTERPRETED
    return _FACTS[key]


def long_row_programs(rows: int, row_bytes: int, device: torch.device) -> int:
    """Programs of the persistent long-row grid: min(rows, SMs x PROGRAMS_PER_SM, the rows that
    fit L2_SHARE of the L2), but at least MIN_SM_SHARE of the SMs."""
    if MAX_PROGRAMS is not None:
        return max(1, min(rows, MAX_PROGRAMS))
    return _programs(rows, row_bytes, *device_facts(device))


def _programs(rows: int, row_bytes: int, sms: int, l2: int) -> int:
    fit = int(l2 * L2_SHARE) // max(1, row_bytes)
    floor = max(1, int(sms * MIN_SM_SHARE))
    return max(1, min(rows, sms * PROGRAMS_PER_SM, max(fit, floor)))


def scale_programs(blocks: int, device: torch.device) -> int:
    return max(1, min(blocks, device_facts(device)[0] * SCALE_PROGRAMS_PER_SM))


# Rows shorter than this many classes take VEC = 1: their edge block (2 VEC classes) would be
# most of the row (correct either way; rows this short go to torch on a GPU anyway).
MIN_VECTOR_ROW = 16


def vector_width(x: torch.Tensor, *others: torch.Tensor | None) -> int:
    """VEC for a CE launch on x (n, C[, D]): 16 bytes' worth of elements when every row of x and of
    the others (the gradient, the probabilities; None skipped) can be cut at the same class into
    16-byte-aligned vectors -- class dim contiguous, equal dtypes, base pointers 16-byte aligned,
    equal row strides modulo VEC -- else 1."""
    vec = 16 // x.element_size()
    if x.shape[1] < MIN_VECTOR_ROW or x.stride(1) != 1 or x.data_ptr() % 16:
        return 1
    for t in others:
        if t is None or t is x:
            continue
        if t.dtype != x.dtype or t.stride(1) != 1 or t.data_ptr() % 16:
            return 1
        if any((t.stride(i) - x.stride(i)) % vec for i in range(0, x.dim()) if i != 1):
            return 1
    return vec


# ---------------------------------------------------------------- passes over the logits


def ce_passes(classes: int, elem_size: int, *, rows: int = 8192, dtype_is_f16: bool = False,
              grad_output_is_one: bool = True, device_facts_: tuple[int, int] = INTERPRETED) -> tuple[int, int]:
    """(reads, writes) of the N x C logits-sized tensors by a fused cross-entropy forward+backward
    with reduction 'mean' (class indices, no options) on the Triton backend -- the arithmetic
    docs/PERFORMANCE.md's table is printed from (`passes_table`, checked by the tests):
      forward    one-block rows (C <= SINGLE_BLOCK_MAX): 1 read + 1 write (the row in registers);
                 longer rows: pass 2 re-reads the row, from L2 when the rows in flight fit
                 L2_SHARE of it (long_row_programs), else from HBM: 1 or 2 reads + 1 write;
      backward   the scale kernel: nothing when grad_output is 1 (it reads one number), else 1
                 read + 1 write; float16 'mean' keeps its gradient unscaled (an AMP loss scale
                 multiplies first): always 1 read + 1 write.
    """
    from . import ops

    single = classes <= ops.SINGLE_BLOCK_MAX
    reads, writes = 1, 1
    if not single:
        programs = _programs(rows, classes * elem_size, *device_facts_)
        reads += int(programs * classes * elem_size > device_facts_[1] * L2_SHARE)
    if dtype_is_f16 or not grad_output_is_one:
        reads, writes = reads + 1, writes + 1
    return reads, writes


def passes_table() -> str:
    """The Markdown table of docs/PERFORMANCE.md: passes and HBM traffic per shape (an H200)."""
    lines = ["| logits (N x C, dtype) | reads + writes, grad_output 1 | traffic | grad_output != 1 |",
             "|---|---|---|---|"]
    for c in (1000, 8192, 32000, 50257, 128256):
        for name, size in (("bf16", 2), ("fp32", 4)):
            r, w = ce_passes(c, size)
            r2, w2 = ce_passes(c, size, grad_output_is_one=False)
            gb = 8192 * c * size * (r + w) / 1e9
            lines.append(f"| 8192 x {c} {name} | {r} + {w} | {gb:.2f} GB | {r2} + {w2} |")
    return "\n".join(lines)

