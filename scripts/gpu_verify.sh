#!/usr/bin/env bash
# GPU machine: everything that checks correctness on the GPU in one call, after scripts/gpu_core.sh
# built ./build and onnxruntime-gpu was unpacked into /tmp/site (scripts/gpu_stage.sh):
# the core's GPU tests, the ORT op on the CUDA provider (incl. CUDA-graph sessions), the
# differential property test on the CUDA provider, and compute-sanitizer memcheck over a slice of it.
#   bash scripts/gpu_verify.sh [PROPERTY_CASES]        results under $OUT (or ./gpu-results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
source scripts/gpu_env.sh build ort
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -rs tests/test_core_gpu.py tests/test_core_tables.py tests/test_ort_op.py tests/test_ort_runtime.py \
  tests/test_ort_cuda_graph.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -12
DLRM_DEPLOY_PROPERTY_DEVICE=cuda DLRM_DEPLOY_PROPERTY_CASES=${1:-600} python3 -m pytest -q -rs tests/test_property.py \
  2>&1 | tee "$OUT/property_cuda.log" | tail -6
DLRM_DEPLOY_PROPERTY_DEVICE=cuda DLRM_DEPLOY_PROPERTY_CASES=60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -x tests/test_property.py -k "not pytorch" -p no:cacheprovider > "$OUT/memcheck_property.log" 2>&1
echo "memcheck (property slice) exit $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck_property.log" | tail -3
