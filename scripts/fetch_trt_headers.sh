#!/usr/bin/env bash
# TensorRT headers for building the plugin library (plugins/trt) without a TensorRT install.
#
# The plugin only needs TensorRT's public headers (it links no TensorRT library: TensorRT loads it
# and hands it every object it calls). No package index ships those headers, so they come from one
# of three places, in this order:
#   1. TENSORRT_ROOT=<a TensorRT install or tarball>   -> nothing to fetch: CMake reads
#      $TENSORRT_ROOT/include directly (pass -DTENSORRT_ROOT=... or export TENSORRT_ROOT).
#   2. TRT_OSS=<a checkout of github.com/NVIDIA/TensorRT, or its bare git directory>
#      -> copies its include/*.h (and include/impl/) into third_party/tensorrt/include.
#      TRT_OSS_REF picks the revision of a git directory (default HEAD; e.g. v10.13, v11.1).
#   3. neither: leaves things as they are; CMake then skips the plugin targets and says why.
#
#   TRT_OSS=~/src/TensorRT bash scripts/fetch_trt_headers.sh
#   TRT_OSS=/path/to/TensorRT.git TRT_OSS_REF=v10.13 bash scripts/fetch_trt_headers.sh
#
# third_party/ is git-ignored: the headers are never committed (TensorRT's licence terms apply).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=third_party/tensorrt/include

if [ -n "${TENSORRT_ROOT:-}" ]; then
  if [ -f "$TENSORRT_ROOT/include/NvInferRuntime.h" ]; then
    echo "TensorRT headers: using TENSORRT_ROOT=$TENSORRT_ROOT (nothing fetched)"
  else
    echo "TensorRT headers: TENSORRT_ROOT=$TENSORRT_ROOT has no include/NvInferRuntime.h" >&2
  fi
  exit 0
fi

if [ -z "${TRT_OSS:-}" ]; then
  if [ -f "$dest/NvInferRuntime.h" ]; then
    echo "TensorRT headers: $dest ($(grep -hE '^#define TRT_(MAJOR|MINOR)_ENTERPRISE' "$dest/NvInferVersion.h" 2>/dev/null \
      | awk '{printf "%s%s", sep, $3; sep="."}'))"
  else
    echo "TensorRT headers: none (set TENSORRT_ROOT or TRT_OSS; the TensorRT plugin will be skipped)"
  fi
  exit 0
fi

ref=${TRT_OSS_REF:-HEAD}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -d "$TRT_OSS/include" ] && [ -f "$TRT_OSS/include/NvInferRuntime.h" ] && [ -z "${TRT_OSS_REF:-}" ]; then
  # A work tree: copy as checked out.
  mkdir -p "$tmp/include"
  cp -r "$TRT_OSS/include/." "$tmp/include/"
else
  # A git directory (bare or not): read include/ at the requested revision.
  gitdir=$TRT_OSS
  [ -d "$TRT_OSS/.git" ] && gitdir=$TRT_OSS/.git
  git --git-dir="$gitdir" archive --format=tar "$ref" include | tar -x -C "$tmp"
fi
[ -f "$tmp/include/NvInferRuntime.h" ] || { echo "no include/NvInferRuntime.h in $TRT_OSS ($ref)" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/include" "$dest"
echo "TensorRT headers: copied $(find "$dest" -name '*.h' | wc -l) headers from $TRT_OSS ($ref) into $dest"
