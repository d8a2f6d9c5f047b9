#!/usr/bin/env bash
# GPU machine (no network): receive a package tree in parts, one part per call, and unpack it once
# all parts are there. The parts come from splitting `tar -c SITE | zstd` into pieces that fit one
# transfer (e.g. onnxruntime-gpu's wheel unpacked, without its TensorRT provider).
#   bash scripts/gpu_stage.sh PARTFILE NPARTS [DEST]      DEST defaults to /tmp/site
set -euo pipefail
part=${1:?usage: gpu_stage.sh PARTFILE NPARTS [DEST]}
n=${2:?usage: gpu_stage.sh PARTFILE NPARTS [DEST]}
dest=${3:-/tmp/site}
mkdir -p /tmp/staged "$dest"
cp "$part" /tmp/staged/
have=$(ls /tmp/staged/part* | wc -l)
echo "$have of $n parts here"
[ "$have" -eq "$n" ] || exit 0
# zstd may be missing there: a copy carried in .gpu/bin (with its libraries) serves then
here=$(cd "$(dirname "$0")/.." && pwd)
command -v zstd > /dev/null || export PATH=$here/.gpu/bin:$PATH LD_LIBRARY_PATH=$here/.gpu/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cat $(for k in $(seq 0 $((n - 1))); do echo /tmp/staged/part$k; done) | zstd -d -q | tar -x -C "$dest"
echo "unpacked into $dest"
