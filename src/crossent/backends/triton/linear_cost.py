"""The linear loss's weight-gradient cost on the Triton backend, per token chunk and in memory: the
arithmetic docs/PERFORMANCE.md's table is printed from (`weight_grad_table`, checked by the tests),
using the code's own rules -- the chunk rows (`crossent.backends.triton.chunk_rows`), the
accumulation inside the product (loops/linear_chunks.py) and the split accumulator's memory
(loops/weight_grad.py). Device figures are an H200's (docs: GPU-NOTES; no GPU has been lent)."""

from __future__ import annotations

import torch

from ..._options import LossOptions
from ..loops import weight_grad

# An H200: dense bfloat16 matrix FLOP/s and HBM bytes/s (vendor peaks, GPU-NOTES section 1).
PEAK_FLOPS = 989.5e12
PEAK_BYTES = 4.8e12
# Heads of the table: (name, V, D), 16-bit weights, N = TOKENS tokens.
HEADS = (("Llama-3 8B", 128256, 4096), ("Gemma-2 2B", 256000, 2304), ("Llama-2 7B", 32000, 4096),
         ("GPT-2", 50257, 768))
TOKENS = 8192


def chunk_traffic(v: int, d: int, *, fused: bool, elem_size: int = 2) -> int:
    """HBM bytes per chunk of grad_W's accumulation (float32, V x D): inside the product
    (``fused``) its epilogue reads and writes the accumulator, 8 V D; else the product writes a
    16-bit slice (elem V D), a separate add reads it (elem V D) and reads and writes the
    accumulator (8 V D)."""
    return 8 * v * d + (0 if fused else 2 * elem_size * v * d)


def intensity(n: int) -> float:
    """FLOP per byte of the fused accumulating product: 2 n V D FLOPs over 8 V D bytes."""
    return 2 * n / 8


def weight_grad_table() -> str:
    """The Markdown table of docs/PERFORMANCE.md: per head, the chunk rows, grad_W's accumulation
    traffic per chunk before/now, its time at PEAK_BYTES against the product's at PEAK_FLOPS, and
    grad_W's memory before/now."""
    from . import chunk_rows

    ridge = PEAK_FLOPS / PEAK_BYTES
    lines = [f"| head (V x D, bf16, N={TOKENS}) | chunk rows n | accumulation traffic per chunk, "
             "before -> now | now, ms at 4.8 TB/s vs product ms | FLOP/byte (ridge "
             f"{ridge:.0f}) | grad_W peak, before -> now | held after |",
             "|---|---|---|---|---|---|---|"]
    for name, v, d in HEADS:
        n = chunk_rows(TOKENS, d, v, torch.bfloat16, LossOptions())
        before, now = chunk_traffic(v, d, fused=False), chunk_traffic(v, d, fused=True)
        mem = weight_grad.memory(v, d)
        product_ms = 2 * n * v * d / PEAK_FLOPS * 1e3
        lines.append(
            f"| {name} ({v} x {d}) | {n} | {before / 1e9:.2f} -> {now / 1e9:.2f} GB | "
            f"{now / PEAK_BYTES * 1e3:.2f} vs {product_ms:.2f} | {intensity(n):.0f} | "
            f"{mem['finishing_to'] / 1e9:.2f} -> {mem['finishing'] / 1e9:.2f} GB | {mem['held'] / 1e9:.2f} GB |")
    return "\n".join(lines)
