"""Compile the Triton kernels for an H100/H200 (sm_90) without a GPU, through Triton's own launch
path: crossent's launchers (backends/triton/ops.py) run on CPU tensors of the real shapes and
dtypes, Triton's JIT binds and specializes their arguments exactly as on a GPU (int32 where a value
fits, the constant 1, 16-divisibility and pointer alignment), and compiles with its own ptxas; the
launch itself is skipped (``warmup``). A stand-in driver names the target (sm_90) and device 0.
Catches what the interpreter cannot: types of loop-carried values, constexpr branches, register
spills. Run in a process without TRITON_INTERPRET (which would swap the JIT for the interpreter).

    python tests/backends/triton/aot_compile.py           the variants the tests and the GPU bench
                                                           launch (the suite's check, ~30 kernels)
    python tests/backends/triton/aot_compile.py --sweep   every option combination of the CE kernel
                                                           in every dtype, one block and loop (slow)

One JSON line per compiled kernel: the variant, the kernel, registers and spill bytes per ptxas,
and the argument types Triton bound.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import jit as triton_jit
from triton.runtime.driver import driver

from crossent._options import LossOptions
from crossent.backends import rows
from crossent.backends.triton import ops

TARGET = GPUTarget("cuda", 90, 32)


class _Sm90Driver:
    """What Triton's launch path asks of its driver before compiling: the target, the device and
    its stream (nothing is launched)."""

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


_COMPILED: list = []
_PTXAS_FLAGS: list = []


def _install() -> None:
    """Route every kernel launch to a compile-only warm-up for sm_90, recording the result."""
    driver.set_active(_Sm90Driver())
    run = triton_jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        _COMPILED.append(kernel)
        return kernel

    triton_jit.JITFunction.run = compile_only


def _ptxas() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def _triton_ptxas_flags() -> list:
    """The register-allocation flag Triton's own ptxas call adds (3.7: --regAllocOptLevel=2, for a
    ptxas 13 bug; 3.6: none), so that the counts are those of the cubin Triton builds."""
    import inspect

    from triton.backends.nvidia import compiler

    return ["--regAllocOptLevel=2"] if "--regAllocOptLevel=2" in inspect.getsource(compiler) else []


def _parse_ptxas(text: str) -> tuple[int, int] | None:
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores", text)
    return (int(regs[0]), sum(int(m) for m in spills)) if regs and spills else None


def ptxas_info(compiled, log: str = "") -> tuple[int, int]:
    """(registers per thread, spill-store bytes) as ptxas reports them for sm_90: from the log of
    Triton's own ptxas call when it compiled the kernel just now (``log``: one kernel's), else
    (a kernel from Triton's cache) by running ptxas on its PTX with Triton's flags."""
    parsed = _parse_ptxas(log)
    if parsed is not None:
        return parsed
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    out = subprocess.run([_ptxas(), "-arch=sm_90a", "-v", *_PTXAS_FLAGS, f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    text = out.stdout + out.stderr
    parsed = _parse_ptxas(text)
    if parsed is None:
        raise RuntimeError(f"ptxas reported no register use: {text[-500:]}")
    return parsed


def vector_accesses(compiled) -> int:
    """Static count of 16-byte global accesses in the kernel's PTX: ld/st .v4.b32 or .v2.b64, and
    the pipelined loops' cp.async.cg (16-byte copies into shared memory)."""
    ptx = compiled.asm["ptx"]
    return len(re.findall(r"(?:ld|st)\.global\S*\.(?:v4\.b32|v2\.b64)|cp\.async\.cg\.shared\.global", ptx))


# ---------------------------------------------------------------- the launches

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32, "f64": torch.float64}
OPTION_FLAGS = ("weight", "smoothing", "z_loss", "softcap", "soft")


def _ce_inputs(dtype, n, c, d, flags):
    shape = (n, c) if d == 1 else (n, c, d)
    x = torch.randn(shape, dtype=dtype)
    opts = LossOptions(label_smoothing=0.1 if "smoothing" in flags else 0.0,
                       z_loss=1e-4 if "z_loss" in flags else 0.0,
                       softcap=30.0 if "softcap" in flags else None, soft="soft" in flags)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.rand(c) + 0.5 if "weight" in flags else None
    index = None if "soft" in flags else torch.randint(0, c, (n,) if d == 1 else (n, d))
    probs = torch.rand(shape, dtype=dtype) if "soft" in flags else None
    tg = rows.targets(index, probs, weight, opts, acc, num_classes=c)
    return x, tg, opts, acc


def ce(dtype, c, flags=(), *, grad=True, n=16, d=1, backward_only=False):
    """ops.launch_ce (or launch_ce_grad) on (n, c[, d]) logits of ``dtype`` with the options
    ``flags``, a per-call 'mean' scale (a device tensor, as the fused loss passes it)."""
    x, tg, opts, acc = _ce_inputs(DTYPES[dtype], n, c, d, flags)
    scale = torch.full((), 1.0 / n, dtype=acc)
    if backward_only:
        stats = torch.zeros((n * d, 3), dtype=acc)
        ops.launch_ce_grad(x, tg, opts, stats, grad=torch.empty_like(x), scale=scale)
    else:
        ops.launch_ce(x, tg, opts, grad=torch.empty_like(x) if grad else None, scale=scale)


def bce(dtype, *, logits, weight, pos_weight, reduction, grad=True, numel=4096 + 100):
    x = torch.rand(numel // 100, 100, dtype=DTYPES[dtype])
    y = torch.rand_like(x)
    w = torch.rand(100, dtype=x.dtype) if weight else None
    pw = torch.rand(100, dtype=x.dtype) if pos_weight else None
    ops.bce_forward(x, y, w, pw, logits, LossOptions(reduction=reduction),
                    torch.empty_like(x) if grad else None)


def scale(dtype, numel=3 * ops.SCALE_BLOCK + 17):
    ops.scale_grad_(torch.randn(numel, dtype=DTYPES[dtype]), torch.full((1,), 0.5))


ALL = ("weight", "smoothing", "z_loss", "softcap")
SOFT_ALL = ALL + ("soft",)


def launched() -> dict:
    """The variants the tests (tests/backends/triton, on a GPU test_triton_gpu.py) and the GPU
    bench (benchmarks/bench_gpu.py) launch: per dtype the one-block and the loop kernel with the
    most state (every option; probability targets with every option), the bench's plain rows,
    the vocabulary sizes whose rows are not 16-byte aligned, K-dim logits, the gradient-only
    kernel, the binary losses and the scale kernel."""
    v = {}
    for dt in DTYPES:
        for c in (1000, 50257):
            v[f"ce {dt} C={c} every option"] = lambda dt=dt, c=c: ce(dt, c, ALL)
            v[f"ce {dt} C={c} soft, every option"] = lambda dt=dt, c=c: ce(dt, c, SOFT_ALL)
    for dt, c in (("bf16", 128256), ("f32", 128256), ("bf16", 32000), ("f16", 32000), ("bf16", 256000),
                  ("bf16", 8192), ("f32", 2048), ("f32", 10)):
        v[f"ce {dt} C={c} plain"] = lambda dt=dt, c=c: ce(dt, c)
    # the longest one-block rows with every option: the register-heaviest one-block variants (the
    # sweep found spills there: 28 bytes in float32 at 8192 classes, 176 in float64 at 4096)
    for dt in DTYPES:
        c = ops.single_block_max(False, dt == "f64", True, DTYPES[dt].itemsize)
        v[f"ce {dt} C={c} every option (longest one block)"] = lambda dt=dt, c=c: ce(dt, c, ALL)
    v["ce bf16 C=128256 loss only"] = lambda: ce("bf16", 128256, grad=False)
    v["ce f32 C=1000 loss only, every option"] = lambda: ce("f32", 1000, ALL, grad=False)
    v["ce bf16 K-dim (16, 1000, 5) every option"] = lambda: ce("bf16", 1000, ALL, d=5)
    v["ce bf16 C=128256 softcap (linear chunk)"] = lambda: ce("bf16", 128256, ("softcap",), n=1024)
    v["ce_grad bf16 C=50257 every option"] = lambda: ce("bf16", 50257, ALL, backward_only=True)
    v["ce_grad f64 C=50257 soft, every option"] = lambda: ce("f64", 50257, SOFT_ALL, backward_only=True)
    v["ce_grad f32 C=1000 plain"] = lambda: ce("f32", 1000, backward_only=True)
    for dt in ("bf16", "f32", "f64"):
        v[f"bce {dt} logits weight pos_weight mean"] = lambda dt=dt: bce(dt, logits=True, weight=True,
                                                                         pos_weight=True, reduction="mean")
        v[f"bce {dt} probabilities none"] = lambda dt=dt: bce(dt, logits=False, weight=False, pos_weight=False,
                                                              reduction="none")
    v["bce f32 logits none, loss only"] = lambda: bce("f32", logits=True, weight=True, pos_weight=False,
                                                      reduction="none", grad=False)
    for dt in DTYPES:
        v[f"scale {dt}"] = lambda dt=dt: scale(dt)
    v.update(gpu_tests())
    return v


def gpu_tests() -> dict:
    """The CE launches of test_triton_gpu.py not among the above, one name per specialization it
    compiles: 1000 classes (one block) and 32000 (the loop; 128256 and 65536 bind the same
    variant) in each 16-bit and float32 dtype, plain and with smoothing; the options torch lacks
    at 50000 classes (float32); GPT-2's 50257 with smoothing; z_loss in bfloat16 (the no-sync,
    compile and linear tests)."""
    v = {}
    for dt in ("bf16", "f16", "f32"):
        for c in (1000, 32000):
            for flags in ((), ("smoothing",)):
                v[f"ce {dt} C={c} {'+'.join(flags) or 'plain'} (gpu tests)"] = \
                    lambda dt=dt, c=c, flags=flags: ce(dt, c, flags)
    for flags in (("z_loss",), ("softcap",), ("weight", "smoothing")):
        v[f"ce f32 C=50000 {'+'.join(flags)} (gpu tests)"] = lambda flags=flags: ce("f32", 50000, flags)
    for dt in ("bf16", "f32"):
        v[f"ce {dt} C=50257 smoothing (gpu tests)"] = lambda dt=dt: ce(dt, 50257, ("smoothing",))
    v["ce bf16 C=32000 z_loss (gpu tests)"] = lambda: ce("bf16", 32000, ("z_loss",))
    return v


def sweep() -> dict:
    """Every option combination of the CE kernel (2^5), with and without a gradient, in every
    dtype, one-block (C = the largest one-block row) and loop (C = 50257): 512 variants, the
    combinations with the most options first (the likeliest to spill: a run cut short has
    covered them in every dtype)."""
    v = {}
    for k in range(len(OPTION_FLAGS), -1, -1):
        for flags in itertools.combinations(OPTION_FLAGS, k):
            for grad, dt in itertools.product((True, False), DTYPES):
                soft = "soft" in flags
                single_c = ops.single_block_max(soft, dt == "f64", bool(set(flags) - {"soft"}), DTYPES[dt].itemsize)
                for c in (single_c, 50257):
                    name = f"ce {dt} C={c} {'+'.join(flags) or 'plain'}{'' if grad else ' loss only'}"
                    v[name] = lambda dt=dt, c=c, flags=flags, grad=grad: ce(dt, c, flags, grad=grad)
    return v


def main(argv) -> int:
    return report(lambda: sweep() if "--sweep" in argv else launched())


def report(variants) -> int:
    """Compiles every variant of ``variants()`` (name -> launch) for sm_90 and prints one JSON line
    per compiled kernel: registers, spilled bytes, warps and argument types. Shared by the
    distillation and log-probs checks (aot_compile_distill.py, aot_compile_log_probs.py)."""
    # (before the first launch defines the kernels: under TRITON_INTERPRET they would be
    # interpreted functions, which compile nothing; importing this module changes nothing)
    os.environ.pop("TRITON_INTERPRET", None)
    _install()
    _PTXAS_FLAGS[:] = _triton_ptxas_flags()
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # (Triton prints its ptxas log: no second ptxas run)
    for name, launch in variants().items():
        start = len(_COMPILED)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            launch()
        logs = printed.getvalue().split("Compiling entry function")[1:]
        kernels = _COMPILED[start:]
        for i, kernel in enumerate(kernels):
            regs, spills = ptxas_info(kernel, logs[0] if len(logs) == 1 and len(kernels) == 1 else "")
            types = {k: t for k, t in kernel.src.signature.items() if t != "constexpr"}
            print(json.dumps({"variant": name, "kernel": kernel.name, "registers": regs, "spill_bytes": spills,
                              "num_warps": kernel.metadata.num_warps, "vector_16B": vector_accesses(kernel),
                              "types": types}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
