#!/usr/bin/env bash
# One command for a lent GPU machine (the device tool runs it in a copy of the repository):
#   bash benchmarks/run_gpu.sh
# 1. installs peer wheels carried in wheels/ (no network there; fetch them here first with
#    pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels \
#        liger-kernel cut-cross-entropy quack-kernels   -- quack's CUTLASS DSL may exceed the
#    64 MiB the device tool carries: then it is reported missing),
# 2. runs the GPU tests (tests/backends/triton/test_triton_gpu.py),
# 3. runs benchmarks/bench_log_probs.py (issue 22) and benchmarks/bench_gpu.py; the table is printed
#    last and everything lands in $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/crossent-gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}"
if ls wheels/*.whl >/dev/null 2>&1; then
  python -m pip install --quiet --no-deps --no-index wheels/*.whl 2>&1 | tail -3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
timeout 240 python -m pytest -q -p no:cacheprovider -o addopts="" tests/backends/triton/test_triton_gpu.py \
  > "$OUT/gpu_tests.txt" 2>&1
echo "GPU tests: $(tail -1 "$OUT/gpu_tests.txt")"
# issue 22: log-probs + entropy at N=4096, D=1024, V=128256, bf16 (crossent vs TRL's composition and kernel)
timeout 150 python -m benchmarks.bench_log_probs --device cuda --dtype bfloat16 --rounds 3 \
  > "$OUT/bench_log_probs.md" 2>&1
echo "log-probs: $(tail -6 "$OUT/bench_log_probs.md")"
timeout 420 python -m benchmarks.bench_gpu --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.md" | tail -60
