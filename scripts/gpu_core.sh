#!/usr/bin/env bash
# GPU machine: build the core, run its GPU tests, memcheck them, and benchmark the kernels.
#   bash scripts/gpu_core.sh [quick]     results under $OUT (or ./gpu-results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
MODE=${1:-full}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80-real;90" ${CMAKE_EXTRA:-} > "$OUT/cmake.log" 2>&1 &&
  cmake --build build -j 16 >> "$OUT/cmake.log" 2>&1 ||
  { tail -40 "$OUT/cmake.log"; exit 1; }
grep "dlrm-deploy:" "$OUT/cmake.log"
source scripts/gpu_env.sh build
export PYTHONUNBUFFERED=1
python3 -m pytest -q -x tests/test_core.py tests/test_core_gpu.py tests/test_core_tables.py 2>&1 | tee "$OUT/pytest_core.log" | tail -15
if [ "$MODE" != quick ]; then
  compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x tests/test_core_gpu.py tests/test_core_tables.py \
    -k "not huge" -p no:cacheprovider > "$OUT/memcheck.log" 2>&1; echo "memcheck exit $?" | tee -a "$OUT/memcheck.log"
  tail -3 "$OUT/memcheck.log"
fi
