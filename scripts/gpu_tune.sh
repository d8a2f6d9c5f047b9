#!/usr/bin/env bash
# GPU machine: A/B runs of the auto kernel's tuning knobs and the occupancy variant's register cap
# at the paper's configuration. Knobs are environment variables read by the core
# (docs/benchmarks.md); the cap is a CMake cache variable, so each value gets its own build.
#   BASELINES=none bash scripts/gpu_tune.sh        (after scripts/gpu_core.sh built ./build)
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
  --baselines "${BASELINES:-fbgemm}" "$@" 2>&1 | grep -E "^  (ours|fbgemm|torch)"; }
for u in 8 4; do b DLRM_DEPLOY_UNROLL=$u --variants auto --dtypes fp32,fp16,int8 --indices uniform; done
for u in 8 4; do
  b DLRM_DEPLOY_UNROLL=$u --variants auto --pinned-variants auto --dtypes fp32,fp16 --indices zipf:1.05 --hot-rows-budget-mb 24
done
b DLRM_DEPLOY_L2_WINDOW=0 --variants auto --pinned-variants auto --dtypes fp32 --indices zipf:1.05 --hot-rows-budget-mb 24
# Occupancy variant: min resident blocks per SM (register cap 65536 / (256 * N)) on sm_90.
for n in 4 6 8; do
  cmake -S . -B build-occ$n -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DDD_BUILD_ADAPTERS=OFF \
    -DDD_OCC_MIN_BLOCKS_SM90=$n > /dev/null && cmake --build build-occ$n -j 16 --target dlrm_deploy_core > /dev/null 2>&1
  DLRM_DEPLOY_LIB_DIR=$PWD/build-occ$n/lib b OCC_MIN_BLOCKS=$n --variants occupancy,combined --pinned-variants "" \
    --dtypes fp32 --indices uniform --baselines none
done
