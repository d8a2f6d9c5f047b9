#!/usr/bin/env bash
# GPU machine: everything that checks correctness on the GPU in one call, after scripts/gpu_core.sh
# built ./build (or, with DD_FROM=wheel, scripts/gpu_wheel.sh installed the wheel) and onnxruntime-gpu
# was unpacked into /tmp/site (scripts/gpu_stage.sh): the core's GPU tests, the ORT op on the CUDA
# provider (incl. CUDA-graph sessions), the differential property test on the CUDA provider, and
# compute-sanitizer memcheck over a slice of it. Tests run from outside the checkout.
#   [DD_FROM=wheel] bash scripts/gpu_verify.sh [PROPERTY_CASES]      results under $OUT (or ./gpu-results)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu-results}; mkdir -p "$OUT"
if [ "${DD_FROM:-build}" = wheel ]; then source "$ROOT/scripts/gpu_env.sh" wheel ort; else source "$ROOT/scripts/gpu_env.sh" "$ROOT/build" ort; fi
T=$ROOT/tests
cd "$(mktemp -d)"
python3 -c "import onnxruntime as o, dlrm_deploy as d; print('onnxruntime', o.__version__, o.get_available_providers()); print('dlrm_deploy from', d.__file__, d.library_path('ort'))"
python3 -m pytest -q -rs -p no:cacheprovider --rootdir "$ROOT" $T/test_core_gpu.py $T/test_core_tables.py $T/test_ort_op.py \
  $T/test_ort_runtime.py $T/test_ort_cuda_graph.py $T/test_packaging.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -12
DLRM_DEPLOY_PROPERTY_DEVICE=cuda DLRM_DEPLOY_PROPERTY_CASES=${1:-600} python3 -m pytest -q -rs -p no:cacheprovider \
  --rootdir "$ROOT" $T/test_property.py 2>&1 | tee "$OUT/property_cuda.log" | tail -6
DLRM_DEPLOY_PROPERTY_DEVICE=cuda DLRM_DEPLOY_PROPERTY_CASES=60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -x -p no:cacheprovider --rootdir "$ROOT" $T/test_property.py -k "not pytorch" > "$OUT/memcheck_property.log" 2>&1
echo "memcheck (property slice) exit $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck_property.log" | tail -3
