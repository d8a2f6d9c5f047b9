#!/usr/bin/env bash
# GPU machine: the kernel benchmark at the paper's configuration (docs/benchmarks.md), uniform and
# zipf:1.05 indices. Needs a built core (scripts/gpu_core.sh) and optionally the FBGEMM bundle.
#   bash scripts/gpu_bench.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
RUNS=${1:-30}
if [ -f .gpu/fbgemm/fbgemm_sub.tar.xz ] && [ ! -d /tmp/fb/fbgemm_gpu ]; then
  mkdir -p /tmp/fb && tar xJf .gpu/fbgemm/fbgemm_sub.tar.xz -C /tmp/fb
fi
source scripts/gpu_env.sh build
export PYTHONPATH=/tmp/fb:$PYTHONPATH PYTHONUNBUFFERED=1
bench() { python3 -m dlrm_deploy.cli bench kernels --runs "$RUNS" "$@" 2>&1 | grep -v -E "^(E[0-9]|W[0-9]|Traceback|  File|    )"; }
bench --indices uniform --dtypes fp32,fp16,int8 --json "$OUT/k_uniform.json" --plot "$OUT/k_uniform.png" | tee "$OUT/bench.log"
bench --indices zipf:1.05 --dtypes fp32,fp16 --hot-rows-budget-mb 24 --variants auto,baseline,combined \
  --json "$OUT/k_zipf.json" --plot "$OUT/k_zipf.png" | tee -a "$OUT/bench.log"
