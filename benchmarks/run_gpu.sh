#!/usr/bin/env bash
# One command for a lent GPU machine (the device tool runs it in a copy of the repository, once):
#   bash benchmarks/run_gpu.sh            on the GPU: tests, then the bench; ends within 540 s
#   bash benchmarks/run_gpu.sh --smoke    here, on the CPU: every line of it, tiny shapes
# 1. peers: the wheels carried in wheels/ (no network there; fetch them here first with
#      pip download --no-deps --only-binary=:all: --python-version 3.12 -d wheels liger-kernel cut-cross-entropy
#    -- quack's dependencies exceed the 64 MiB the device tool carries) are unpacked into
#    $OUT/peers, a --target folder on PYTHONPATH: the image's own environment is left as it is;
# 2. the GPU tests (tests/backends/triton/test_triton_gpu.py), at most TESTS_S seconds;
# 3. benchmarks/bench_gpu.py with what is left of the budget (less 100 s for bench_log_probs.py): every row printed as it is measured,
#    $OUT/bench_gpu.json rewritten after each section, torch.compile rows last.
# Everything lands in $OUT (the device tool brings it back): device.txt, gpu_tests.txt,
# bench_gpu.txt, bench_gpu.json.
set -uo pipefail
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
TOTAL_S=540  # the whole script, below the device tool's 600 s per command
TESTS_S=150
OUT="${OUT:-/tmp/crossent-gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PEERS="$OUT/peers"
export PYTHONPATH="$PWD/src:$PWD/tests:$PEERS:${PYTHONPATH:-}"
if [ "$SMOKE" = 1 ]; then
  export TRITON_INTERPRET=1
  TOTAL_S=1800  # (Triton's interpreter on a shared CPU: the smoke run checks the code, not the budget)
fi
PY="${PYTHON:-python3}"
left() { echo $((TOTAL_S - SECONDS)); }

if ls wheels/*.whl >/dev/null 2>&1; then
  timeout 60 "$PY" -m pip install --quiet --no-deps --no-index --target "$PEERS" wheels/*.whl 2>&1 | tail -3
else
  echo "no wheels/: peers not installed"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"; } > "$OUT/device.txt"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  >> "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

"$PY" -c "import pytest" 2>/dev/null || echo "pytest is not installed: carry its wheels (pytest, pluggy, iniconfig) in wheels/"
timeout -k 5 "$TESTS_S" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/backends/triton/test_triton_gpu.py \
  > "$OUT/gpu_tests.txt" 2>&1
echo "GPU tests (rc $?): $(tail -1 "$OUT/gpu_tests.txt")"

LP_RESERVE_S=100  # kept for the log-probs bench (issue 22) after bench_gpu
BENCH_S=$(( $(left) - 15 - LP_RESERVE_S ))
BENCH_ARGS=(--out "$OUT" --budget $((BENCH_S - 30)))
[ "$SMOKE" = 1 ] && BENCH_ARGS+=(--smoke)
if [ "$BENCH_S" -gt 60 ]; then
  timeout -k 5 "$BENCH_S" "$PY" -m benchmarks.bench_gpu "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/bench_gpu.txt"
  echo "bench rc ${PIPESTATUS[0]}"
else
  echo "bench skipped: $(left) s left"
fi

# log-probs + entropy (issue 22): crossent vs TRL's composition and its chunked kernel, bf16, the
# RL shape N=4096, D=1024, V=128256; tiny on the CPU in --smoke
LP_S=$(( $(left) - 10 ))
if [ "$SMOKE" = 1 ]; then LP_ARGS=(--n 64 --d 32 --v 500 --rounds 1); else LP_ARGS=(--device cuda --dtype bfloat16 --rounds 3); fi
if [ "$LP_S" -gt 45 ]; then
  timeout -k 5 "$LP_S" "$PY" -m benchmarks.bench_log_probs "${LP_ARGS[@]}" > "$OUT/bench_log_probs.txt" 2>&1
  echo "log-probs bench rc $?:"; tail -8 "$OUT/bench_log_probs.txt"
else
  echo "log-probs bench skipped: $(left) s left"
fi
echo "run_gpu.sh done in ${SECONDS} s; results in $OUT"
