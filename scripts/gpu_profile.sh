#!/usr/bin/env bash
# GPU machine: Nsight Compute summary of the auto kernel and FBGEMM's kernel on one dtype at the
# paper configuration (one launch each).   bash scripts/gpu_profile.sh int8
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
dtype=${1:-int8}
[ -d build/lib ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DDD_BUILD_ADAPTERS=OFF > /dev/null &&
  cmake --build build -j 16 --target dlrm_deploy_core > /dev/null; }
if [ -f .gpu/fbgemm/fbgemm_sub.tar.xz ] && [ ! -d /tmp/fb/fbgemm_gpu ]; then
  mkdir -p /tmp/fb && tar xJf .gpu/fbgemm/fbgemm_sub.tar.xz -C /tmp/fb
fi
source scripts/gpu_env.sh build
export PYTHONPATH=/tmp/fb:$PYTHONPATH
for k in warp_kernel nbit; do
  ncu --clock-control none --kernel-name "regex:$k" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    python3 -m dlrm_deploy.cli bench kernels --dtypes "$dtype" --variants auto --pinned-variants "" \
    --baselines fbgemm --runs 1 --warmup 0 > "$OUT/ncu_${dtype}_$k.txt" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Memory Throughput|L2 Hit|L1/TEX Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit Reg|Compute \(SM\)|Mem Busy|Max Bandwidth|DRAM Bandwidth" "$OUT/ncu_${dtype}_$k.txt" | head -30
done
