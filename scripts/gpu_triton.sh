#!/usr/bin/env bash
# GPU machine (no network): Triton measurements of issue 10 with the real tritonserver of the
# nvidia-pytriton wheel (python backend, ONNX Runtime CUDA provider + our op library inside).
#   bash scripts/gpu_triton.sh [OUT_DIR]                 default OUT_DIR: results/triton
# 1. dynamic batching vs one request per execution: 64-sample requests, pooling 20-150, concurrency
#    sweep up to 64 (target: >= 4x throughput at concurrency 64, p99 < 20 ms on the H100);
# 2. 1 vs 2 GPUs with dynamic batching at saturation (target: >= 1.8x) - only where 2 GPUs are visible.
#
# Staged beforehand, in ignored folders (nothing is fetched here):
#   PYTRITON_DIR  the nvidia-pytriton 0.7.0 wheel unpacked (holds pytriton/ and nvidia_pytriton.libs/);
#                 default .gpu/pytriton
#   STUB_ENV      a folder with numpy<2 for the python backend's stub (pip install --target DIR "numpy<2"
#                 on a machine with network, for this machine's Python version); default .gpu/triton-stub-env
#   CLIENT_SITE   tritonclient[grpc,http] and its dependencies (pip install --target); default .gpu/tritonclient
#   onnxruntime-gpu unpacked into /tmp/site (scripts/gpu_stage.sh), CUDA libraries from torch's wheel
#   (scripts/gpu_env.sh ... ort); the CUDA build of our libraries in build/lib (`make build`).
# Knobs: INSTANCES (model instances per GPU, default 2), DURATION (s per point, default 20),
#        CONCURRENCY (default 1,8,32,64), SAT_CONCURRENCY (saturation sweep, default 64,128,256),
#        PROCESSES (client processes the clients are spread over, default 8: one Python client
#        process cannot load an H100; gRPC requests are serialised once), SENDER (prebuilt or
#        tritonclient, default prebuilt), PROFILE (1: model.py logs its steps, summarised per
#        point, default 1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/results/triton}
PYTRITON_DIR=${PYTRITON_DIR:-$here/.gpu/pytriton}
STUB_ENV=${STUB_ENV:-$here/.gpu/triton-stub-env}
CLIENT_SITE=${CLIENT_SITE:-$here/.gpu/tritonclient}
INSTANCES=${INSTANCES:-2}
DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-1,8,32,64}
SAT_CONCURRENCY=${SAT_CONCURRENCY:-64,128,256}
PROCESSES=${PROCESSES:-8}
SENDER=${SENDER:-prebuilt}
PROFILE=${PROFILE:-1}
for d in "$PYTRITON_DIR/pytriton" "$STUB_ENV" "$CLIENT_SITE" /tmp/site/onnxruntime; do
  [ -e "$d" ] || { echo "gpu_triton.sh: $d is missing (see the staging notes at the top)" >&2; exit 2; }
done
# shellcheck disable=SC1091
source "$here/scripts/gpu_env.sh" "$here/build" ort
export PYTHONPATH="$PYTRITON_DIR:$CLIENT_SITE:$PYTHONPATH" DLRM_DEPLOY_TRITON_STUB_ENV=$STUB_ENV
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpus.csv"
ngpu=$(( $(nvidia-smi -L | wc -l) ))
stub=$(ls "$PYTRITON_DIR"/pytriton/tritonserver/python_backend_stubs/"$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"/triton_python_backend_stub)
ldd "$stub" | grep -q "not found" && { ldd "$stub"; echo "the stub misses libraries (a shared libpython?)" >&2; exit 2; }

model=$out/paper_fp16.onnx
[ -f "$model" ] || python3 -m dlrm_deploy.cli export --config paper --dtype fp16 --out "$model"

# repo NAME ARGS...: a python-backend repository of the paper model
repo() {
  local name=$1; shift
  python3 -m dlrm_deploy.cli triton-repo "$model" --backend python --out "$out/repo_$name" --name dlrm \
    --kind gpu --instances "$INSTANCES" --force "$@"
}
repo dyn1 --gpus 0 --max-batch-size 64 --max-queue-delay-us 500
repo none1 --gpus 0 --batching none
[ "$ngpu" -ge 2 ] && repo dyn2 --gpus 0,1 --max-batch-size 64 --max-queue-delay-us 500

# bench NAME CONCURRENCY: serve repo_NAME, sweep over gRPC (clients in $PROCESSES processes), stop the server
bench() {
  python3 - "$out" "$1" "$2" "$DURATION" "$PROCESSES" "$SENDER" "$PROFILE" <<'EOF'
import sys, json
from dlrm_deploy.runtime.triton_server import TritonServer
from dlrm_deploy.runtime import triton_bench as B
out, name, conc, duration = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3].split(",")], float(sys.argv[4])
processes, sender, profile = int(sys.argv[5]), sys.argv[6], sys.argv[7] == "1"
prof = f"{out}/profile_{name}" if profile else None
marks = [{}]
def progress(line):
    print(f"{name:<6}{line}", flush=True)
    if prof and not line.startswith("  "):  # model.py's steps over this point
        print(f"{'':<6}  {B.format_profile(B.profile_summary(prof, since=marks[0]))}", flush=True)
        marks[0] = B.profile_marks(prof)
with TritonServer(f"{out}/repo_{name}", timeout_s=600, log_path=f"{out}/server_{name}.log", profile_dir=prof) as s:
    print(B.HEADER, flush=True)
    res = B.sweep(f"{out}/paper_fp16.onnx", "dlrm", {"grpc": s.grpc_url}, conc,
                  B.Workload(batch=(64, 64), pooling=(20, 150), pool=32), duration_s=duration, warmup_s=3,
                  progress=progress, processes=processes, sender=sender)
json.dump(res, open(f"{out}/bench_{name}.json", "w"), indent=1)
B.plot(res, f"{out}/bench_{name}.png")
EOF
}
bench none1 "$CONCURRENCY" | tee "$out/bench_none1.txt"
bench dyn1 "$CONCURRENCY,$SAT_CONCURRENCY" | tee "$out/bench_dyn1.txt"
[ "$ngpu" -ge 2 ] && bench dyn2 "$SAT_CONCURRENCY" | tee "$out/bench_dyn2.txt"

python3 - "$out" <<'EOF'
import sys, json, os
out = sys.argv[1]
load = lambda n: {r["concurrency"]: r for r in json.load(open(f"{out}/bench_{n}.json"))["rows"]}
none, dyn = load("none1"), load("dyn1")
c = 64
print(f"concurrency {c}, 64 samples/request, pooling 20-150 (gRPC):")
print(f"  one request per execution: {none[c]['samples_per_s']:,.0f} samples/s, p99 {none[c]['p99_ms']:.1f} ms, "
      f"server busy {none[c]['server_busy'] * 100:.0f}%")
print(f"  dynamic batching:          {dyn[c]['samples_per_s']:,.0f} samples/s, p99 {dyn[c]['p99_ms']:.1f} ms, "
      f"{dyn[c]['requests_per_execution']:.1f} requests/execution, server busy {dyn[c]['server_busy'] * 100:.0f}%")
print(f"  speedup {dyn[c]['samples_per_s'] / none[c]['samples_per_s']:.2f}x (target >= 4x, p99 < 20 ms)")
if os.path.exists(f"{out}/bench_dyn2.json"):
    two = load("dyn2")
    s1 = max(r["samples_per_s"] for r in dyn.values())
    s2 = max(r["samples_per_s"] for r in two.values())
    print(f"saturation: 1 GPU {s1:,.0f}, 2 GPUs {s2:,.0f} samples/s: {s2 / s1:.2f}x (target >= 1.8x)")
for n in ("none1", "dyn1", "dyn2"):
    if os.path.exists(f"{out}/bench_{n}.json"):
        for r in json.load(open(f"{out}/bench_{n}.json"))["rows"]:
            if r.get("client_bound"):
                print(f"client-bound? {n} at concurrency {r['concurrency']}: {r['client_bound']} (raise PROCESSES)")
EOF
