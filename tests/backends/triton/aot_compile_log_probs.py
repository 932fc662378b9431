"""Compile the log-probability kernels (kernels_log_probs.py) for an H100/H200 (sm_90) ahead of
time, without a GPU, as aot_compile.py does for the cross-entropy kernels; run in a process
without TRITON_INTERPRET.

    python tests/backends/triton/aot_compile_log_probs.py  -> one JSON line per variant
"""

from __future__ import annotations

import json

from aot_compile import _compile, _ptxas_info

from crossent.backends.triton import kernels_log_probs, ops_log_probs


def forward(xdt, acc, **flags):
    p = "*" + acc
    sig = {"x_ptr": f"*{xdt}", "target_ptr": "*i64", "lp_ptr": p, "ent_ptr": p, "m_ptr": p, "logs_ptr": p}
    for name in ("C", "sx_n", "sx_c", "ignore_index"):
        sig[name] = "i64"
    sig["params_ptr"] = p
    block = ops_log_probs.LP_BLOCK
    consts = dict(BLOCK=block, ACC_F64=acc == "fp64", **flags)
    return _compile(kernels_log_probs.lp_forward_kernel, sig, consts, ops_log_probs._warps(block))


def backward(xdt, acc, **flags):
    p = "*" + acc
    sig = {"x_ptr": f"*{xdt}", "grad_ptr": f"*{xdt}", "target_ptr": "*i64", "m_ptr": p, "logs_ptr": p,
           "ent_ptr": p, "gl_ptr": p, "gh_ptr": p}
    for name in ("C", "sx_n", "sx_c", "sg_n", "sg_c"):
        sig[name] = "i64"
    sig["params_ptr"] = p
    block = ops_log_probs.LP_BLOCK
    consts = dict(BLOCK=block, ACC_F64=acc == "fp64", **flags)
    return _compile(kernels_log_probs.lp_backward_kernel, sig, consts, ops_log_probs._warps(block))


VARIANTS = {
    "log_probs forward bf16 entropy softcap": lambda: forward("bf16", "fp32", HAS_CAP=True, ENTROPY=True),
    "log_probs forward fp32": lambda: forward("fp32", "fp32", HAS_CAP=False, ENTROPY=False),
    "log_probs forward fp64 entropy": lambda: forward("fp64", "fp64", HAS_CAP=False, ENTROPY=True),
    "log_probs backward bf16 both softcap": lambda: backward("bf16", "fp32", HAS_CAP=True, HAS_G=True, HAS_H=True),
    "log_probs backward fp32 log-probs only": lambda: backward("fp32", "fp32", HAS_CAP=False, HAS_G=True, HAS_H=False),
    "log_probs backward fp64 entropy only": lambda: backward("fp64", "fp64", HAS_CAP=True, HAS_G=False, HAS_H=True),
}

if __name__ == "__main__":
    for name, build in VARIANTS.items():
        regs, spills = _ptxas_info(build())
        print(json.dumps({"variant": name, "registers": regs, "spill_bytes": spills}), flush=True)
