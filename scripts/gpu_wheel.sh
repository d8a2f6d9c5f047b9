#!/usr/bin/env bash
# GPU machine (no network): build the wheel the way `pip wheel .` does and install it where
# scripts/gpu_env.sh finds it (`source scripts/gpu_env.sh wheel`), so the GPU tests run against the
# installed package, as a user has it. The build backend's wheels (scikit-build-core and its two
# dependencies, downloaded once on a machine with network: `pip download -d .gpu/skbuild
# scikit-build-core pathspec packaging`) travel in .gpu/skbuild.
#   bash scripts/gpu_wheel.sh           wheel in /tmp/dist, installed into /tmp/ddsite; log under $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
rm -rf /tmp/skb /tmp/dist /tmp/ddsite
python3 -m pip install -q --no-index --find-links .gpu/skbuild --target /tmp/skb scikit-build-core
PYTHONPATH=/tmp/skb CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip wheel . -v --no-build-isolation --no-deps -w /tmp/dist \
  -Cbuild-dir=build/wheel > "$OUT/wheel.log" 2>&1 || { tail -40 "$OUT/wheel.log"; exit 1; }
grep "dlrm-deploy:" "$OUT/wheel.log" || true
python3 -m pip install -q --no-deps --target /tmp/ddsite /tmp/dist/*.whl
ls -l /tmp/dist
