"""Compile the log-probability kernels (kernels_log_probs.py) for an H100/H200 (sm_90) ahead of
time, without a GPU, through Triton's own launch path as aot_compile.py does for the cross-entropy
kernels: crossent's launchers (ops_log_probs.forward / backward) run on CPU tensors of the real
dtypes, Triton binds their arguments as on a GPU and compiles; nothing is launched. Run in a
process without TRITON_INTERPRET.

    python tests/backends/triton/aot_compile_log_probs.py  -> one JSON line per variant
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import aot_compile
import torch

N, C = 16, 3000  # (C above one block: the backward's 2-D grid has several column blocks)


def _inputs(dtype, softcap):
    x = torch.randn(N, C, dtype=aot_compile.DTYPES[dtype])
    opts = SimpleNamespace(temperature=0.7, softcap=30.0 if softcap else None, ignore_index=-100)
    tg = SimpleNamespace(index=torch.randint(0, C, (N,)))
    return x, opts, tg


def forward(dtype, *, softcap, entropy):
    from crossent.backends.triton import ops_log_probs

    x, opts, tg = _inputs(dtype, softcap)
    ops_log_probs.forward(x, tg, opts, entropy=entropy)


def backward(dtype, *, softcap, g, h):
    from crossent.backends.triton import ops_log_probs

    x, opts, tg = _inputs(dtype, softcap)
    acc = torch.float64 if dtype == "f64" else torch.float32
    stats = [torch.zeros(N, dtype=acc) for _ in range(3)]
    ones = torch.ones(N, dtype=acc)
    ops_log_probs.backward(x, tg, opts, stats[0], stats[1], stats[2], ones if g else None, ones if h else None,
                           grad=torch.empty_like(x))


VARIANTS = {
    "log_probs forward bf16 entropy softcap": lambda: forward("bf16", softcap=True, entropy=True),
    "log_probs forward fp32": lambda: forward("f32", softcap=False, entropy=False),
    "log_probs forward fp64 entropy": lambda: forward("f64", softcap=False, entropy=True),
    "log_probs backward bf16 both softcap": lambda: backward("bf16", softcap=True, g=True, h=True),
    "log_probs backward fp32 log-probs only": lambda: backward("f32", softcap=False, g=True, h=False),
    "log_probs backward fp64 entropy only": lambda: backward("f64", softcap=True, g=False, h=True),
}


def main() -> int:
    return aot_compile.report(lambda: VARIANTS)


if __name__ == "__main__":
    sys.exit(main())
