"""Compile the distillation kernels (kernels_distill.py) for an H100/H200 (sm_90) ahead of time,
without a GPU, through Triton's own launch path as aot_compile.py does for the cross-entropy
kernels: crossent's launchers (ops_distill.distill_chunk / topk_chunk) run on CPU tensors of the
real dtypes, Triton binds their arguments as on a GPU and compiles; nothing is launched. Run in a
process without TRITON_INTERPRET. (The interpreter had accepted two things the GPU compiler
rejects: a plain float global and a loop-carried '_' changing type.)

    python tests/backends/triton/aot_compile_distill.py  -> one JSON line per variant
"""

from __future__ import annotations

import sys

import aot_compile
import torch

N, V, K = 8, 50257, 20  # (V over one block: every loop over a row's blocks runs)


def dense(dtype, *, beta, hard, temperature=2.0, softcap=30.0, grad=True):
    from crossent._options import DistillationOptions
    from crossent.backends.triton import ops_distill

    dt = aot_compile.DTYPES[dtype]
    zs, zt = torch.randn(N, V, dtype=dt), torch.randn(N, V, dtype=dt)
    opts = DistillationOptions(beta=beta, temperature=temperature, softcap=softcap,
                               teacher_softcap=softcap and 20.0, hard_weight=0.5 if hard else 0.0)
    buffers = ops_distill.Buffers(zs.numel(), dt, dt, opts, zs.device)
    ops_distill.distill_chunk(zs, zt, torch.randint(0, V, (N,)), torch.ones(N, dtype=torch.bool), opts,
                              grad=torch.empty_like(zs) if grad else None, scale=torch.full((), 0.5),
                              buffers=buffers)


def topk(dtype, *, tail, softcap):
    from crossent._options import DistillationOptions
    from crossent.backends.triton import ops_distill

    dt = aot_compile.DTYPES[dtype]
    zs = torch.randn(N, V, dtype=dt)
    opts = DistillationOptions(topk=True, tail=tail, softcap=softcap)
    buffers = ops_distill.Buffers(zs.numel(), dt, dt, opts, zs.device)
    log_q = torch.randn(N, K, dtype=torch.float64 if dtype == "f64" else torch.float32)
    ops_distill.topk_chunk(zs, torch.randint(0, V, (N, K)), log_q, opts, grad=torch.empty_like(zs),
                           scale=torch.full((), 0.5), buffers=buffers)


VARIANTS = {
    "distill bf16 mixture (beta 0.5) every option": lambda: dense("bf16", beta=0.5, hard=True),
    "distill bf16 forward KL every option": lambda: dense("bf16", beta=0.0, hard=True),
    "distill f32 reverse KL every option": lambda: dense("f32", beta=1.0, hard=True),
    "distill bf16 plain soft T=1, loss only": lambda: dense("bf16", beta=0.0, hard=False, temperature=1.0,
                                                           softcap=None, grad=False),
    "distill f64 mixture every option": lambda: dense("f64", beta=0.5, hard=True),
    "topk bf16 tail softcap": lambda: topk("bf16", tail=True, softcap=30.0),
    "topk bf16 tail plain": lambda: topk("bf16", tail=True, softcap=None),
    "topk f64 tail plain": lambda: topk("f64", tail=True, softcap=None),
    "topk f32 renormalized softcap": lambda: topk("f32", tail=False, softcap=30.0),
}


def main() -> int:
    return aot_compile.report(lambda: VARIANTS)


if __name__ == "__main__":
    sys.exit(main())
