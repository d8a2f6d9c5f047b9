#!/usr/bin/env bash
# GPU machine: the ONNX Runtime op on the CUDA provider (onnxruntime-gpu installed beforehand into
# /tmp/site), then the demo on CUDA.
#   bash scripts/gpu_ort.sh            (after scripts/gpu_core.sh built ./build)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
source scripts/gpu_env.sh build ort
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -rs tests/test_ort_op.py tests/test_ort_runtime.py 2>&1 | tee "$OUT/pytest_ort.log" | tail -8
python3 -m dlrm_deploy.cli demo --device cuda 2>&1 | tee "$OUT/demo_cuda.log" | tail -25
