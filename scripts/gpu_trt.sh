#!/usr/bin/env bash
# GPU machine (no network): the TensorRT adapter end to end with TensorRT-RTX's Python bindings.
#   1. stage:  bash scripts/gpu_trt.sh stage .gpu/trtrtx/libs 0     (one wheel part per call: copies
#              part K to /tmp/staged, joins, checks sha256 and installs into /tmp/site once all are there)
#   2. run:    bash scripts/gpu_trt.sh run                           results in $OUT/trt.log (or ./gpu-results)
# Wheels come from scripts/stage_trt_rtx.sh (.gpu/trtrtx/{libs,bindings}); TensorRT headers for the
# build from third_party/tensorrt (scripts/fetch_trt_headers.sh) or TENSORRT_ROOT.
#
# `run` builds the core, the plugin and its harness; runs the harness, then under compute-sanitizer
# memcheck; exports the `small` and `paper` DLRMs (paper with fp16 tables: 12 x 500k x 128); parses
# each with TensorRT-RTX's ONNX parser with our plugin loaded and runs build_serialized_network.
# Engine execution is expected to fail on compute capability 9.0 with TensorRT-RTX (logged, not fatal).
set -uo pipefail
cd "$(dirname "$0")/.."

stage() {  # STAGEDIR PARTINDEX
  local src=$1 i=$2 dest whl n have
  dest=/tmp/staged/$(basename "$src")
  mkdir -p "$dest"
  cp "$src/p$i/part$i" "$dest/"
  [ -f "$src/MANIFEST" ] && cp "$src/MANIFEST" "$dest/"
  [ -f "$dest/MANIFEST" ] || { echo "no MANIFEST yet in $dest"; return 0; }
  whl=$(awk '/^wheel /{print $2}' "$dest/MANIFEST"); n=$(awk '/^parts /{print $2}' "$dest/MANIFEST")
  have=$(ls "$dest"/part* | wc -l)
  echo "$whl: $have of $n parts here"
  [ "$have" -eq "$n" ] || return 0
  for k in $(seq 0 $((n - 1))); do cat "$dest/part$k"; done > "$dest/$whl"
  echo "$(awk '/^sha256 /{print $2}' "$dest/MANIFEST")  $dest/$whl" | sha256sum -c - || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$dest/$whl" && echo "installed $whl into /tmp/site"
}

if [ "${1:-}" = stage ]; then
  stage "${2:?STAGEDIR}" "${3:?PARTINDEX}"
  exit $?
fi
[ "${1:-run}" = run ] || { echo "usage: gpu_trt.sh stage STAGEDIR K | gpu_trt.sh run"; exit 2; }

OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
LOG=$OUT/trt.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
WORK=${WORK:-/tmp/dd_trt}; mkdir -p "$WORK"
BUILD=${BUILD:-build}
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv
python3 --version; nvcc --version | tail -1

step "TensorRT-RTX from /tmp/site"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
libdir=/tmp/site/tensorrt_rtx_libs
if [ ! -f "$libdir/libtensorrt_rtx.so.1" ]; then
  echo "no $libdir/libtensorrt_rtx.so.1: stage the wheels first (gpu_trt.sh stage ...)"; exit 1
fi
# The ONNX parser dlopens libtensorrt_rtx.so (no .1) and aborts without it.
ln -sfn libtensorrt_rtx.so.1 "$libdir/libtensorrt_rtx.so"
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DLRM_DEPLOY_TRT_MODULE=tensorrt_rtx_bindings
python3 -c "import tensorrt_rtx_bindings as trt; print('tensorrt_rtx_bindings', trt.__version__)" || exit 1

step "build: core, plugin, harness"
trt_root=${TENSORRT_ROOT:-$PWD/third_party/tensorrt}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="80-real;90" -DTENSORRT_ROOT="$trt_root" \
  ${CMAKE_EXTRA:-} > "$OUT/trt_cmake.log" 2>&1 &&
  cmake --build "$BUILD" -j 16 --target dlrm_deploy_core dlrm_deploy_trt dd_trt_harness >> "$OUT/trt_cmake.log" 2>&1 ||
  { tail -40 "$OUT/trt_cmake.log"; exit 1; }
grep "dlrm-deploy:" "$OUT/trt_cmake.log"
grep -i "warning" "$OUT/trt_cmake.log" | grep -v "^CMake Warning" | head -20
echo "exported symbols:"; nm -D --defined-only "$BUILD/lib/libdlrm_deploy_trt.so"
echo "linked libraries:"; ldd "$BUILD/lib/libdlrm_deploy_trt.so"
source scripts/gpu_env.sh "$PWD/$BUILD"
export PYTHONPATH=/tmp/site:$PYTHONPATH PYTHONUNBUFFERED=1

step "harness"
"$BUILD/bin/dd_trt_harness" > "$OUT/trt_harness.log" 2>&1; echo "harness exit $?"
grep -E "^(FAIL|PASSED|FAILED|  ok)" "$OUT/trt_harness.log" | tail -40

step "harness under compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --error-exitcode 9 "$BUILD/bin/dd_trt_harness" > "$OUT/trt_memcheck.log" 2>&1
echo "memcheck exit $?"; tail -4 "$OUT/trt_memcheck.log"

step "plugin registration through TensorRT-RTX"
python3 - <<'PY'
import tensorrt_rtx_bindings as trt
from dlrm_deploy.runtime.trt import load_plugin, trt_logger
load_plugin(trt)
creators = [c for c in trt.get_plugin_registry().all_creators if c.name == "EmbeddingBag"]
for c in creators:
    print("creator:", c.name, "version", c.plugin_version, "namespace", c.plugin_namespace, "interface",
          getattr(c, "interface_info", None) and c.interface_info.kind)
    print("fields:", [f.name for f in c.field_names])
assert creators, "EmbeddingBag not registered"
PY

step "export small and paper"
python3 -m dlrm_deploy.cli export --config small --out "$WORK/small.onnx" 2>&1 | tail -5
python3 -m dlrm_deploy.cli export --config small --dtype int8 --out "$WORK/small_int8.onnx" 2>&1 | tail -3
# paper: 12 x 500k x 128 tables; fp16 halves the 3 GB of fp32 (external data either way).
python3 -m dlrm_deploy.cli export --config paper --dtype fp16 --out "$WORK/paper_fp16.onnx" 2>&1 | tail -5
ls -la "$WORK"

step "parse + build_serialized_network (TensorRT-RTX)"
for m in small small_int8 paper_fp16; do
  [ -f "$WORK/$m.onnx" ] || { echo "$m: not exported"; continue; }
  echo "--- $m"
  python3 -m dlrm_deploy.cli trt-build "$WORK/$m.onnx" --out "$WORK/$m.plan" --max-batch 2048 --opt-batch 2048 \
    --pooling 150 --workspace-mb 4096 2>&1 | tail -25
  echo "$m trt-build exit ${PIPESTATUS[0]}"
done
ls -la "$WORK"/*.plan 2>/dev/null

step "engine execution (expected to fail on compute capability 9.0 with TensorRT-RTX)"
if [ -f "$WORK/small.plan" ]; then
  python3 -c "
import argparse
from dlrm_deploy.runtime.trt import run_plan
run_plan('$WORK/small.plan', argparse.Namespace(onnx='$WORK/small.onnx', batch=256, pooling=8, runs=50))" 2>&1 | tail -12
fi

step "pytest tests/test_trt.py"
DLRM_DEPLOY_TRT_ONNX="$WORK/small.onnx" python3 -m pytest -q -rs tests/test_trt.py 2>&1 | tail -20
echo; echo "log: $LOG"
