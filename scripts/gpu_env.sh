#!/usr/bin/env bash
# Source on a GPU machine without network: makes the package importable from this checkout
# (no pip install needed) and the built libraries findable.
#   source scripts/gpu_env.sh [BUILD_DIR] [ort]
# With "ort": also onnxruntime-gpu unpacked into /tmp/site (scripts/gpu_stage.sh) and the CUDA
# libraries it loads from torch's wheel.
_dd_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dd_pp=${TMPDIR:-/tmp}/dlrm_deploy_pythonpath
rm -rf "$_dd_pp" && mkdir -p "$_dd_pp/dlrm_deploy"
for f in "$_dd_root"/dlrm_deploy/*.py; do ln -s "$f" "$_dd_pp/dlrm_deploy/"; done
ln -s "$_dd_root/export" "$_dd_pp/dlrm_deploy/export"
ln -s "$_dd_root/runtime" "$_dd_pp/dlrm_deploy/runtime"
export PYTHONPATH="$_dd_pp${PYTHONPATH:+:$PYTHONPATH}"
export DLRM_DEPLOY_LIB_DIR="${1:-$_dd_root/build}/lib"
if [ "${2:-}" = ort ]; then
  _dd_site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  export PYTHONPATH=/tmp/site:$PYTHONPATH PYTHONUNBUFFERED=1
  export LD_LIBRARY_PATH=$_dd_site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
