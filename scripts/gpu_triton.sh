#!/usr/bin/env bash
# GPU machine (no network): Triton measurements of issue 10 with the real tritonserver of the
# nvidia-pytriton wheel (python backend, ONNX Runtime CUDA provider + our op library inside).
#   bash scripts/gpu_triton.sh [OUT_DIR]                 default OUT_DIR: results/triton
# 1. dynamic batching vs one request per execution (max_batch_size 1, no batcher: the python backend's
#    max_batch_size-0 configuration), in each request form (packed: dense + one ids [INT32] + one
#    lengths input; tables: 25 inputs, ids and lengths per table): 64-sample requests, pooling
#    20-150, concurrency sweep up to 64 (target: >= 4x throughput at concurrency 64, p99 < 20 ms on
#    the H100), and packed vs tables;
# 2. 1 vs 2 GPUs with dynamic batching at saturation (target: >= 1.8x), first form of FORMS only -
#    only where 2 GPUs are visible.
#
# Staged beforehand, in ignored folders (nothing is fetched here):
#   PYTRITON_DIR  the nvidia-pytriton 0.7.0 wheel unpacked (holds pytriton/ and nvidia_pytriton.libs/);
#                 default .gpu/pytriton
#   STUB_ENV      a folder with numpy<2 for the python backend's stub (pip install --target DIR "numpy<2"
#                 on a machine with network, for this machine's Python version); default .gpu/triton-stub-env
#   CLIENT_SITE   tritonclient[grpc,http] and its dependencies (pip install --target); default .gpu/tritonclient
#   onnxruntime-gpu unpacked into /tmp/site (scripts/gpu_stage.sh), CUDA libraries from torch's wheel
#   (scripts/gpu_env.sh ... ort); the CUDA build of our libraries in build/lib (`make build`).
# Knobs: INSTANCES (model instances per GPU, default 4; docs/triton.md), DURATION (s per point, default 20),
#        CONCURRENCY (default 1,8,32,64), SAT_CONCURRENCY (saturation sweep, default 64,128,256),
#        PROCESSES (client processes the clients are spread over, default 8: one Python client
#        process cannot load an H100; gRPC requests are serialised once), SENDER (prebuilt or
#        tritonclient, default prebuilt), PROFILE (1: model.py logs its steps, summarised per
#        point, default 1), FORMS (request forms measured, default "packed tables"; the summary also
#        covers a form measured into OUT_DIR by an earlier call, so FORMS=packed then FORMS=tables
#        splits the run in two), REPO_ARGS (extra triton-repo flags, e.g. --keep-model-inputs);
#        DLRM_DEPLOY_TRITON_PINNED=0 in the environment keeps model.py's merged inputs pageable;
#        MODEL (the exported paper model; default OUT_DIR/paper_fp16.onnx, exported when missing),
#        PROTOCOL (http or grpc, default http: Triton 2.51 serves one GPU 8-19% faster over HTTP,
#        docs/triton.md; both send prebuilt requests), BACKEND (python, default, or native: our C++
#        backend "dlrm_deploy", packed form only; PROFILE then defaults to 0, there is no model.py;
#        $DLRM_DEPLOY_ONNXRUNTIME_LIBRARY names a libonnxruntime.so with the CUDA provider beside it,
#        docs/triton.md "Which ONNX Runtime").
# Results: OUT_DIR/bench_{none1,dyn1}_FORM.{json,png,txt} (dyn2_FORM with 2 GPUs) and a summary.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/results/triton}
PYTRITON_DIR=${PYTRITON_DIR:-$here/.gpu/pytriton}
STUB_ENV=${STUB_ENV:-$here/.gpu/triton-stub-env}
CLIENT_SITE=${CLIENT_SITE:-$here/.gpu/tritonclient}
INSTANCES=${INSTANCES:-4}
DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-1,8,32,64}
SAT_CONCURRENCY=${SAT_CONCURRENCY:-64,128,256}
PROCESSES=${PROCESSES:-8}
PROTOCOL=${PROTOCOL:-http}
case $PROTOCOL in grpc|http) ;; *) echo "gpu_triton.sh: PROTOCOL: '$PROTOCOL' is not grpc or http" >&2; exit 2;; esac
SENDER=${SENDER:-prebuilt}
BACKEND=${BACKEND:-python}
case $BACKEND in python) PROFILE=${PROFILE:-1};; native) PROFILE=${PROFILE:-0};;
  *) echo "gpu_triton.sh: BACKEND: '$BACKEND' is not python or native" >&2; exit 2;; esac
FORMS=${FORMS:-packed tables}
for f in $FORMS; do
  case $f in packed|tables) ;; *) echo "gpu_triton.sh: FORMS: '$f' is not packed or tables" >&2; exit 2;; esac
done
first_form=${FORMS%% *}
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

model=${MODEL:-$out/paper_fp16.onnx}
[ -f "$model" ] || python3 -m dlrm_deploy.cli export --config paper --dtype fp16 --out "$model"

# repo NAME ARGS...: a python- or native-backend repository of the paper model
repo() {
  local name=$1; shift
  python3 -m dlrm_deploy.cli triton-repo "$model" --backend "$BACKEND" --out "$out/repo_$name" --name dlrm \
    --kind gpu --instances "$INSTANCES" --force ${REPO_ARGS:-} "$@"
}
for f in $FORMS; do
  repo "dyn1_$f" --gpus 0 --max-batch-size 64 --max-queue-delay-us 500 --request-form "$f"
  repo "none1_$f" --gpus 0 --batching none --request-form "$f"
done
if [ "$ngpu" -ge 2 ]; then
  repo "dyn2_$first_form" --gpus 0,1 --max-batch-size 64 --max-queue-delay-us 500 --request-form "$first_form"
fi

# bench NAME CONCURRENCY: serve repo_NAME, sweep over $PROTOCOL (clients in $PROCESSES processes), stop the server
bench() {
  python3 - "$out" "$1" "$2" "$DURATION" "$PROCESSES" "$SENDER" "$PROFILE" "$model" "$PROTOCOL" <<'EOF'
import sys, json
from dlrm_deploy.runtime.triton_server import TritonServer
from dlrm_deploy.runtime import triton_bench as B
out, name, conc, duration = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3].split(",")], float(sys.argv[4])
processes, sender, profile, model, protocol = int(sys.argv[5]), sys.argv[6], sys.argv[7] == "1", sys.argv[8], sys.argv[9]
prof = f"{out}/profile_{name}" if profile else None
marks, summaries = [{}], []
def progress(line):
    print(f"{name:<13}{line}", flush=True)
    if prof and not line.startswith("  "):  # model.py's steps over this point
        summaries.append(B.profile_summary(prof, since=marks[0]))
        print(f"{'':<13}  {B.format_profile(summaries[-1])}", flush=True)
        marks[0] = B.profile_marks(prof)
with TritonServer(f"{out}/repo_{name}", timeout_s=600, log_path=f"{out}/server_{name}.log", profile_dir=prof) as s:
    print(B.HEADER, flush=True)
    res = B.sweep(model, "dlrm", {protocol: s.grpc_url if protocol == "grpc" else s.http_url}, conc,
                  B.Workload(batch=(64, 64), pooling=(20, 150), pool=32), duration_s=duration, warmup_s=3,
                  progress=progress, processes=processes, sender=sender)
for row, summary in zip(res["rows"], summaries):  # model.py's own time per point beside Triton's
    row["profile"] = summary
json.dump(res, open(f"{out}/bench_{name}.json", "w"), indent=1)
B.plot(res, f"{out}/bench_{name}.png")
EOF
}
for f in $FORMS; do
  bench "none1_$f" "$CONCURRENCY" | tee "$out/bench_none1_$f.txt"
  bench "dyn1_$f" "$CONCURRENCY,$SAT_CONCURRENCY" | tee "$out/bench_dyn1_$f.txt"
done
if [ "$ngpu" -ge 2 ]; then
  bench "dyn2_$first_form" "$SAT_CONCURRENCY" | tee "$out/bench_dyn2_$first_form.txt"
fi

python3 - "$out" "$FORMS" "$PROTOCOL" <<'EOF'
import sys, json, os
out, measured, protocol = sys.argv[1], sys.argv[2].split(), sys.argv[3]
# this run's forms, then any other form measured into OUT_DIR before (FORMS=packed, then FORMS=tables)
forms = measured + [f for f in ("packed", "tables") if f not in measured and os.path.exists(f"{out}/bench_dyn1_{f}.json")]
def load(n):
    path = f"{out}/bench_{n}.json"
    return {r["concurrency"]: r for r in json.load(open(path))["rows"]} if os.path.exists(path) else {}
def own_ms(r):  # the python backend's own time per request: Triton's compute per request minus model.py's
    per = (r.get("profile") or {}).get("ms_per_request", {})
    if "execute" not in per or not r.get("requests_per_execution"):
        return ""  # no model.py timing log (PROFILE=0, or the native backend)
    return f", python backend's own time per request {r['server_compute_ms'] / r['requests_per_execution'] - per['execute']:.2f} ms"
c = 64
print(f"concurrency {c}, 64 samples/request, pooling 20-150 ({'gRPC' if protocol == 'grpc' else 'HTTP'}):")
at = {}
for form in forms:
    none, dyn = load(f"none1_{form}"), load(f"dyn1_{form}")
    if c not in none or c not in dyn:
        print(f"  {form}: no concurrency-{c} point (CONCURRENCY must include {c})")
        continue
    at[form] = dyn[c]
    print(f"  {form} request form:")
    print(f"    one request per execution: {none[c]['samples_per_s']:,.0f} samples/s, p99 {none[c]['p99_ms']:.1f} ms, "
          f"server busy {none[c]['server_busy'] * 100:.0f}%{own_ms(none[c])}")
    print(f"    dynamic batching:          {dyn[c]['samples_per_s']:,.0f} samples/s, p99 {dyn[c]['p99_ms']:.1f} ms, "
          f"{dyn[c]['requests_per_execution']:.1f} requests/execution, server busy {dyn[c]['server_busy'] * 100:.0f}%"
          f"{own_ms(dyn[c])}")
    print(f"    speedup {dyn[c]['samples_per_s'] / none[c]['samples_per_s']:.2f}x (target >= 4x, p99 < 20 ms)")
if "packed" in at and "tables" in at:
    print(f"packed vs tables with dynamic batching at concurrency {c}: "
          f"{at['packed']['samples_per_s'] / at['tables']['samples_per_s']:.2f}x the throughput, "
          f"p99 {at['packed']['p99_ms']:.1f} vs {at['tables']['p99_ms']:.1f} ms")
first = measured[0]
if os.path.exists(f"{out}/bench_dyn2_{first}.json"):
    one, two = load(f"dyn1_{first}"), load(f"dyn2_{first}")
    s1 = max(r["samples_per_s"] for r in one.values())
    s2 = max(r["samples_per_s"] for r in two.values())
    print(f"saturation ({first}): 1 GPU {s1:,.0f}, 2 GPUs {s2:,.0f} samples/s: {s2 / s1:.2f}x (target >= 1.8x)")
for form in forms:
    for n in (f"none1_{form}", f"dyn1_{form}", f"dyn2_{form}"):
        for r in load(n).values():
            if r.get("client_bound"):
                print(f"client-bound? {n} at concurrency {r['concurrency']}: {r['client_bound']} (raise PROCESSES)")
EOF
