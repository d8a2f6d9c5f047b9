#!/usr/bin/env bash
# GPU machine: A/B runs of the auto kernel's tuning knobs at the paper's configuration (auto only,
# against FBGEMM). Knobs are environment variables read by the core (docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
if [ -f .gpu/fbgemm/fbgemm_sub.tar.xz ] && [ ! -d /tmp/fb/fbgemm_gpu ]; then
  mkdir -p /tmp/fb && tar xJf .gpu/fbgemm/fbgemm_sub.tar.xz -C /tmp/fb
fi
source scripts/gpu_env.sh build
export PYTHONPATH=/tmp/fb:$PYTHONPATH PYTHONUNBUFFERED=1
# b VAR=VALUE BENCH-ARGS...: one bench run with one knob set
b() { local knob=$1; shift; echo "### $knob $*"; env "$knob" python3 -m dlrm_deploy.cli bench kernels --runs 20 \
  --variants auto --baselines "${BASELINES:-fbgemm}" "$@" 2>&1 | grep -E "^  (ours|fbgemm)"; }
b DLRM_DEPLOY_UNROLL=8 --dtypes fp32,int8 --indices uniform
b DLRM_DEPLOY_UNROLL=4 --dtypes fp32,fp16 --indices uniform
b DLRM_DEPLOY_VEC_BYTES=8 --dtypes fp16,int8 --indices uniform
b DLRM_DEPLOY_VEC_BYTES=16 --dtypes fp16 --indices uniform
b DLRM_DEPLOY_VEC_BYTES=4 --dtypes int8 --indices uniform
for agg in 0 256 1024; do b DLRM_DEPLOY_AGG_ROWS=$agg --dtypes fp32,fp16 --indices zipf:1.05 --hot-rows-budget-mb 24 --pinned-variants auto; done
b DLRM_DEPLOY_L2_WINDOW=0 --dtypes fp32 --indices zipf:1.05 --hot-rows-budget-mb 24 --pinned-variants auto
b DLRM_DEPLOY_VEC_BYTES=16 --dtypes fp16 --indices zipf:1.05 --hot-rows-budget-mb 24 --pinned-variants auto
