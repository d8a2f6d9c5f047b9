#!/usr/bin/env bash
# Source on a GPU machine without network: makes the package importable from this checkout
# (no pip install needed) and the built libraries findable.
#   source scripts/gpu_env.sh [BUILD_DIR | wheel] [ort]
# With "wheel": the package that scripts/gpu_wheel.sh installed into /tmp/ddsite instead (run the
# tests from outside the checkout then, so that the checkout's folders do not shadow it).
# With "ort": also onnxruntime-gpu unpacked into /tmp/site (scripts/gpu_stage.sh) and the CUDA
# libraries it loads from torch's wheel.
_dd_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "${1:-}" = wheel ]; then
  export PYTHONPATH="/tmp/ddsite${PYTHONPATH:+:$PYTHONPATH}" DLRM_DEPLOY_TEST_INSTALLED=1
  unset DLRM_DEPLOY_LIB_DIR
else
  export PYTHONPATH="$_dd_root${PYTHONPATH:+:$PYTHONPATH}"  # dlrm_deploy/__init__.py finds export/, runtime/
  export DLRM_DEPLOY_LIB_DIR="${1:-$_dd_root/build}/lib"
fi
if [ "${2:-}" = ort ]; then
  _dd_site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  export PYTHONPATH=/tmp/site:$PYTHONPATH PYTHONUNBUFFERED=1
  export LD_LIBRARY_PATH=$_dd_site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
