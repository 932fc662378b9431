"""Compile the Triton kernels for an H100/H200 (sm_90) ahead of time, without a GPU: Triton's own
compiler and the ptxas it ships. Catches what the interpreter cannot (types of loop-carried values,
constexpr branches, register spills). Run in a process without TRITON_INTERPRET.

    python tests/backends/triton/aot_compile.py   -> one JSON line per variant: registers, spill bytes
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from crossent.backends.triton import kernels, ops

TARGET = GPUTarget("cuda", 90, 32)

def _ptxas() -> str:
    """The ptxas Triton itself uses for sm_90 (its compiler picks it per architecture)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def _compile(fn, signature, constexprs, num_warps):
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def _ptxas_info(compiled) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) as ptxas reports them for sm_90."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    out = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    text = out.stdout + out.stderr
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores", text)
    if not regs or not spills:
        raise RuntimeError(f"ptxas reported no register use: {text[-500:]}")
    return int(regs[0]), sum(int(m) for m in spills)


def ce(xdt, acc, *, single, **flags):
    p = "*" + acc
    sig = {"x_ptr": f"*{xdt}", "grad_ptr": f"*{xdt}", "target_ptr": "*i64", "probs_ptr": f"*{xdt}",
           "weight_ptr": p, "wsum_ptr": p, "scale_ptr": p, "loss_ptr": p, "lse_ptr": p}
    for name in ("C", "D", "sx_n", "sx_c", "sx_d", "sg_n", "sg_c", "sg_d", "sp_n", "sp_c", "sp_d",
                 "scale_stride", "ignore_index"):
        sig[name] = "i64"
    sig["params_ptr"] = p
    block, _ = ops.block_for(ops.SINGLE_BLOCK_MAX if single else 10**6, flags["SOFT"], acc == "fp64")
    consts = dict(BLOCK=block, SINGLE=single, ACC_F64=acc == "fp64", **flags)
    return _compile(kernels.ce_kernel, sig, consts, ops._warps(block))


def bce(xdt, acc, **flags):
    p = "*" + acc
    sig = {"x_ptr": f"*{xdt}", "y_ptr": f"*{xdt}", "w_ptr": f"*{xdt}", "pw_ptr": f"*{xdt}",
           "loss_ptr": p, "partial_ptr": p, "grad_ptr": f"*{xdt}", "numel": "i64", "w_mod": "i64",
           "pw_mod": "i64"}
    consts = dict(BLOCK=ops.BINARY_BLOCK, ACC_F64=acc == "fp64", **flags)
    return _compile(kernels.bce_kernel, sig, consts, 4)


ALL = dict(SOFT=False, HAS_WEIGHT=True, SMOOTH=True, HAS_ZL=True, HAS_CAP=True, WRITE_GRAD=True)
NONE = dict(SOFT=False, HAS_WEIGHT=False, SMOOTH=False, HAS_ZL=False, HAS_CAP=False, WRITE_GRAD=False)
VARIANTS = {
    "ce bf16 one-block everything": lambda: ce("bf16", "fp32", single=True, **ALL),
    "ce bf16 loop everything": lambda: ce("bf16", "fp32", single=False, **ALL),
    "ce bf16 one-block soft everything": lambda: ce("bf16", "fp32", single=True, **dict(ALL, SOFT=True)),
    "ce fp32 loop loss only": lambda: ce("fp32", "fp32", single=False, **NONE),
    "ce fp64 one-block soft": lambda: ce("fp64", "fp64", single=True, **dict(ALL, SOFT=True)),
    "ce fp64 loop soft": lambda: ce("fp64", "fp64", single=False, **dict(ALL, SOFT=True)),
    "bce logits pos_weight": lambda: bce("bf16", "fp32", LOGITS=True, HAS_W=True, HAS_PW=True,
                                         PER_ELEMENT=False, WRITE_GRAD=True),
    "bce probabilities none": lambda: bce("fp32", "fp32", LOGITS=False, HAS_W=False, HAS_PW=False,
                                          PER_ELEMENT=True, WRITE_GRAD=True),
}

if __name__ == "__main__":
    for name, build in VARIANTS.items():
        regs, spills = _ptxas_info(build())
        print(json.dumps({"variant": name, "registers": regs, "spill_bytes": spills}), flush=True)
