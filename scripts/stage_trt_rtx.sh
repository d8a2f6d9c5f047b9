#!/usr/bin/env bash
# Prepares .gpu/trtrtx: the TensorRT-RTX wheels (CUDA 13, CPython 3.12, Linux x86-64) for a GPU
# machine without network, in parts small enough to carry one at a time (scripts/gpu_trt.sh joins them).
#
#   bash scripts/stage_trt_rtx.sh [OUTDIR]          default OUTDIR: .gpu/trtrtx (git-ignored)
#   TRT_RTX_VERSION=1.7.1 (default; falls back to the newest 1.7.x the index has)
#   STAGE_WHEEL=<path of stage-wheel.sh> (default: ../shared/gpu/stage-wheel.sh beside this checkout)
#
# Result: OUTDIR/libs/{p0/part0,p1/part1,...,MANIFEST} (tensorrt-rtx-cu13-libs) and
#         OUTDIR/bindings/{p0/part0,...,MANIFEST} (tensorrt-rtx-cu13-bindings of the same version).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/trtrtx}
version=${TRT_RTX_VERSION:-1.7.1}
stage=${STAGE_WHEEL:-../shared/gpu/stage-wheel.sh}
[ -f "$stage" ] || { echo "stage-wheel.sh not found at $stage (set STAGE_WHEEL)" >&2; exit 1; }
# stage-wheel.sh runs `python3 -m pip`: prefer the project's virtual environment when there is one.
[ -x .venv/bin/python3 ] && export PATH="$PWD/.venv/bin:$PATH"

mkdir -p "$out"
if ! bash "$stage" "tensorrt-rtx-cu13-libs==$version.*" "$out/libs"; then
  echo "tensorrt-rtx-cu13-libs==$version not available; taking the newest 1.7.x"
  bash "$stage" "tensorrt-rtx-cu13-libs>=1.7,<1.8" "$out/libs"
fi
# The bindings must match the libraries' version exactly.
whl=$(awk '/^wheel /{print $2}' "$out/libs/MANIFEST")
got=$(echo "$whl" | cut -d- -f2)
echo "libs wheel: $whl (version $got)"
bash "$stage" "tensorrt-rtx-cu13-bindings==$got" "$out/bindings"
echo "$got" > "$out/VERSION"
du -sh "$out"/libs "$out"/bindings
echo "staged TensorRT-RTX $got in $out: carry $out/libs/pK one part at a time (with MANIFEST), see scripts/gpu_trt.sh"
