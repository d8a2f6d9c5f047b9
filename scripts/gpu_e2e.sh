#!/usr/bin/env bash
# GPU machine: the whole-DLRM benchmark (paper config) with onnxruntime-gpu in /tmp/site and the
# FBGEMM bundle. One configuration per call keeps each call short:
#   bash scripts/gpu_e2e.sh fp32 uniform
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
dtype=${1:-fp32}; idx=${2:-uniform}; shift 2 || true
if [ -f .gpu/fbgemm/fbgemm_sub.tar.xz ] && [ ! -d /tmp/fb/fbgemm_gpu ]; then
  mkdir -p /tmp/fb && tar xJf .gpu/fbgemm/fbgemm_sub.tar.xz -C /tmp/fb
fi
source scripts/gpu_env.sh build
site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
export PYTHONPATH=/tmp/site:/tmp/fb:$PYTHONPATH PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
tag=${dtype}_${idx//[:.]/}
python3 -m dlrm_deploy.cli bench e2e --config paper --dtype "$dtype" --indices "$idx" --workdir /tmp/e2e \
  --json "$OUT/e2e_$tag.json" --plot "$OUT/e2e_$tag.png" "$@" 2>&1 | grep -v -E "^(E[0-9]|W[0-9])" | tee "$OUT/e2e_$tag.log" | tail -30
