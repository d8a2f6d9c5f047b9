"""The README.md that ``dlrm-deploy triton-repo`` writes beside each model: inputs and outputs,
batching, how to build the engine, start the server, measure and check the answers."""

from __future__ import annotations

import pathlib

from .model_io import ModelIO
from .triton_config import triton_dtype


def trtexec_shapes(prof, which: int) -> str:
    """One trtexec shapes flag value (which: 0 min, 1 opt, 2 max) of a profile {input: (min, opt, max)}."""
    return ",".join(f"{n}:" + "x".join(str(d) for d in s[which]) for n, s in prof.items())


def _io_rows(io: ModelIO) -> str:
    return "\n".join(
        f"| `{t.name}` | {'input' if t.role != 'output' else 'output'} | {t.role} | {triton_dtype(t.elem_type)} | "
        f"`{t.triton_dims}` |" for t in io.inputs + io.outputs)


def _server_text(backend: str, serve_root: str, served_model_dir: str, lib_name: str) -> tuple[str, str]:
    """(tritonserver command, how the library gets loaded) for the onnxruntime / tensorrt backends."""
    if backend == "onnxruntime":
        server = f"tritonserver --model-repository={serve_root} --disable-auto-complete-config"
        loading = (f"`config.pbtxt` names the custom-op library in `model_operations` by its absolute path\n"
                   f"`{served_model_dir}/{lib_name}`: the onnxruntime backend registers it with every session it\n"
                   "creates. If the server sees the repository at another path, regenerate with `--serve-root`\n"
                   "(or edit that one line). The library must be the CUDA build, and built against an ONNX Runtime\n"
                   "API version no newer than the ONNX Runtime inside the Triton release you run.")
        return server, loading
    plugins = f"{served_model_dir}/{lib_name}"
    server = (f"tritonserver --model-repository={serve_root} --disable-auto-complete-config \\\n"
              f"    --backend-config=tensorrt,plugins=\"{plugins}\"")
    loading = ("TensorRT needs the plugin registered before it deserializes the engine. The command above\n"
               "lets the tensorrt backend load it (`plugins=` takes several libraries separated by `;`). The\n"
               "alternative is to preload it into the server process:\n\n"
               f"```\nLD_PRELOAD={plugins}${{LD_PRELOAD:+:$LD_PRELOAD}} tritonserver --model-repository={serve_root} "
               "--disable-auto-complete-config\n```\n\n"
               "Use the plugin library built against the TensorRT version of that Triton release.")
    return server, loading


def _engine_text(backend: str, has_plan: bool, prof, served_model_dir: str, max_batch_size: int, pooling: int) -> str:
    if backend == "onnxruntime":
        return "`1/model.onnx` (with any external-data files beside it) runs in the onnxruntime backend."
    if has_plan:
        return ("`1/model.plan` was given to `triton-repo`. A plan only runs on the GPU model and TensorRT\n"
                "version it was built with; if the server differs, rebuild it there.\n")
    profile = ("\n".join(f"  {w:<4} {trtexec_shapes(prof, i)}" for i, w in enumerate(("min", "opt", "max")))
               if prof else "  (static shapes: no profile)")
    return ("No engine is included: a plan only runs on the GPU model and TensorRT version it was built\n"
            "with. On the serving machine (inside the Triton container, whose trtexec matches the\n"
            "server's TensorRT), build it once before starting the server:\n\n"
            f"```\n{served_model_dir}/build_plan.sh            # add --fp16 etc. as needed\n```\n\n"
            f"Optimization profile (trtexec syntax):\n```\n{profile}\n```\n"
            f"(up to {max_batch_size} samples per request and {pooling} lookup(s) per bag on average;\n"
            "regenerate with other `--max-batch-size` / `--pooling` / `--shape` values to change it).\n")


def _batching_text(name: str, batched: bool, max_batch_size: int, has_perf: bool,
                   ragged: str | None = None) -> tuple[str, str]:
    """(batching paragraph, perf_analyzer command)."""
    if ragged:
        batching = (f"Ragged batching of the lengths form (export/lengths.py): up to {max_batch_size} requests per\n"
                    "execution. Every input is `allow_ragged_batch`; the server concatenates each input over the\n"
                    "merged requests into one 1-D tensor, which is exact here: per-sample lengths and ids\n"
                    "concatenate, dense rows are flattened (`[1, b*F]` per request) and reshaped in the graph.\n"
                    f"Outputs are scattered back by the per-request shape of `{ragged}` (`batch_output`\n"
                    "BATCH_SCATTER_WITH_INPUT_SHAPE): a request gets `[1, b]`. No `batch_input` is needed: the\n"
                    "offsets are derived from the lengths inside the model. Not yet run in a server (docs/triton.md).")
        perf = (f"perf_analyzer -m {name} -i grpc -u localhost:8001 -b 1 "
                + ("--input-data perf_data.json " if has_perf else "") + "--concurrency-range 1:64")
        return batching, perf
    if batched:
        batching = (f"All inputs and outputs share a leading batch dim, so the config uses `max_batch_size:\n"
                    f"{max_batch_size}` and the dynamic batcher; dims above include that batch dim, the config's\n"
                    "do not.")
        perf = (f"perf_analyzer -m {name} -i grpc -u localhost:8001 -b 1 "
                + ("--input-data perf_data.json " if has_perf else "") + "--concurrency-range 1:16")
        return batching, perf
    batching = (
        "`max_batch_size: 0`, no dynamic batcher. The `EmbeddingBag` inputs are not batched by sample:\n"
        "`indices` holds every lookup of every table in table-major order and `offsets` the start of\n"
        "each bag (table t, sample b at position t*B+b). Concatenating two requests along dim 0, which\n"
        "is what Triton's batcher does, would interleave tables and leave the offsets pointing at the\n"
        "first request's lookups: wrong results. So each request carries a whole batch (B samples,\n"
        f"here up to {max_batch_size}), dims are the full ONNX shapes with -1 for variable sizes, and\n"
        "throughput comes from large client batches and concurrent requests over several instances.\n"
        "`--disable-auto-complete-config` keeps the server from guessing a batch size: every input\n"
        "starts with a variable dim, which auto-complete would take for a batch dim.\n"
        "For dynamic batching of small requests use `--backend python` (docs/triton.md).")
    perf = (f"perf_analyzer -m {name} -i grpc -u localhost:8001 "
            + ("--input-data perf_data.json " if has_perf else "--shape NAME:DIMS ... ") + "--concurrency-range 1:16")
    return batching, perf


def _check_text(onnx_name: str, name: str, repo: str) -> str:
    return f"""## Check the answers and measure with dlrm-deploy
From a dlrm-deploy checkout:
```
python scripts/triton_client.py --onnx {onnx_name} --model {name} --protocol grpc --url localhost:8001
python scripts/triton_client.py --onnx {onnx_name} --model {name} --protocol http --url localhost:8000
dlrm-deploy triton-bench --repo {repo} --model {name} --concurrency 1,8,64 --out bench.json
```
The client sends one batch and compares the server's output with ONNX Runtime run locally on the same
ONNX file; triton-bench sweeps concurrency (throughput, p50/p90/p99 latency, queue/compute split).
"""


def write_readme(model_dir: pathlib.Path, io: ModelIO, *, name, backend, batched, max_batch_size, pooling,
                 served_model_dir, serve_root, lib_name, has_plan, has_perf, prof, onnx_name, ragged=None) -> None:
    """README.md of an onnxruntime or tensorrt model folder."""
    server, loading = _server_text(backend, serve_root, served_model_dir, lib_name)
    build = _engine_text(backend, has_plan, prof, served_model_dir, max_batch_size, pooling)
    batching, perf = _batching_text(name, batched, max_batch_size, has_perf, ragged)
    perf_note = ("Run it from this folder (or give the path of `perf_data.json`, which is one valid request:\n"
                 f"row ids inside each table, {pooling} lookups per bag on average, so checked mode passes);\n"
                 "perf_analyzer's random data would index outside the tables and fail.") if has_perf else (
                 "No `perf_data.json` could be derived from this model: give perf_analyzer valid row ids\n"
                 "with `--input-data`, since random data would index outside the tables.")
    text = f"""# Triton model `{name}` ({backend} backend)

Written by `dlrm-deploy triton-repo` from `{onnx_name}`. The files follow Triton's model-configuration
schema and the model file's inputs and outputs; `dlrm_deploy.runtime.triton.validate_repo` checks both
(with the `model_config.proto` shipped in `tritonclient`).

## Inputs and outputs (from the ONNX file)
| name | kind | role | Triton type | ONNX dims (-1 = variable) |
|---|---|---|---|---|
{_io_rows(io)}

## Batching
{batching}

## Engine
{build}

## Start the server
```
{server}
```
{loading}

Run it inside NVIDIA's Triton Inference Server container with the repository mounted at `{serve_root}`
and the GPUs passed through (`--gpus all`), publishing ports 8000 (HTTP), 8001 (gRPC), 8002 (metrics).

## Measure
```
{perf}
```
{perf_note}

{_check_text(onnx_name, name, serve_root)}"""
    (model_dir / "README.md").write_text(text)


def _python_form_text(spec: dict) -> str:
    """The request-form paragraph of a python-backend README (packed or tables)."""
    bags = "\n".join(f"- `{b['lengths']}` / `{b['indices']}`"
                     + (f" / `{b['weights']}`" if b["weights"] else "")
                     + f": {b['tables']} table(s) with {b['table_rows']} rows; model inputs `{b['indices']}`, "
                     f"`{b['offsets']}`" for b in spec["bags"])
    if spec.get("form") != "packed":
        return ("**Tables form** (`--request-form tables`): one ids and one lengths input per model ids/offsets\n"
                "input, in the model's own types:\n\n" + bags + "\n\n"
                "Lengths hold b entries per table (table-major when one input serves several tables), and add\n"
                "up to the number of ids.")
    p = spec["packed"]
    order = []
    for b, (t0, t1) in zip(spec["bags"], p["bag_tables"]):
        order.append(f"{t0}" if t1 - t0 == 1 else f"{t0}-{t1 - 1}")
    tables = "\n".join(f"| {o} | `{b['indices']}` | {', '.join(map(str, b['table_rows']))} | "
                        f"{'yes' if b['weights'] else 'no'} |"
                        for o, b in zip(order, spec["bags"]))
    wire = p["ids_dtype"].upper()
    why = ("no table has more than 2^31 rows" if p["ids_type"] == 6 else
           "a table has more than 2^31 rows, more than INT32 ids address")
    weights = (f"\n- `{p['weights']}` `[1, N_w]` ({p['weights_dtype']}): the per-sample weights of the tables that take "
               "them (column `weights` below), in the same order as their ids." if p["weights"] else "")
    return f"""**Packed form** (the default; `--request-form tables` gives one input per model input): besides the
per-sample inputs, a request carries
- `{p['ids']}` `[1, N]` ({wire}: {why}): every table's ids, **table-major**: all ids of table 0 for
  the request's b samples (sample after sample), then table 1's, ... ({p['tables']} tables);
- `{p['lengths']}` `[1, {p['tables']}*b]` (INT32): ids per sample, table-major (table 0's b lengths, then table 1's, ...);
  they add up to N.{weights}

| table | model input | rows | weights |
|---|---|---|---|
{tables}

`model.py` casts the ids to the model's index type and derives each model input's offsets."""


def _position_text(spec: dict) -> str:
    """Where the position in an out-of-range error counts, for the served model's inputs."""
    p = spec.get("packed")
    if p and len(spec["bags"]) == 1 and spec["bags"][0]["tables"] == p["tables"]:
        return f"its position counts in the request's `{p['ids']}`"
    return "its position counts within the ids of the model input that takes that table"


def write_python_readme(model_dir: pathlib.Path, spec: dict, inputs: list, *, name: str, onnx_name: str,
                        max_batch_size: int, max_queue_delay_us: int, repo: str, native: bool = False) -> None:
    """README.md of a python- or native-backend model folder: the request format and how to serve it."""
    rows = "\n".join(f"| `{n}` | {t} | `[1] + {d}` |" for n, t, d in inputs)
    if native:
        head = f"""# Triton model `{name}` (native backend `dlrm_deploy`)

Written by `dlrm-deploy triton-repo --backend native` from `{onnx_name}`. Our Triton backend
(`libtriton_dlrm_deploy.so` in the server's `backends/dlrm_deploy/`) runs `1/model.onnx` in the ONNX
Runtime library that `config.pbtxt`'s `onnxruntime_library` names (for KIND_GPU: one with the CUDA
provider beside it; docs/triton.md) with our custom-op library, and merges the requests Triton's
dynamic batcher collects (up to {max_batch_size} requests, waiting at most {max_queue_delay_us} us)
into one run."""
        serve = f"""or, in NVIDIA's Triton container (copy `libtriton_dlrm_deploy.so` into
`/opt/tritonserver/backends/dlrm_deploy/`, point `onnxruntime_library` at
`/opt/tritonserver/backends/onnxruntime/libonnxruntime.so`):
`tritonserver --model-repository={repo} --disable-auto-complete-config`."""
    else:
        head = f"""# Triton model `{name}` (python backend)

Written by `dlrm-deploy triton-repo --backend python` from `{onnx_name}`. `1/model.py` runs
`1/model.onnx` in ONNX Runtime with our custom-op library (CUDA execution provider for KIND_GPU
instances where onnxruntime has it, else CPU) and merges the requests Triton's dynamic batcher
collects (up to {max_batch_size} requests, waiting at most {max_queue_delay_us} us) into one run."""
        serve = f"""or, in NVIDIA's Triton container (python backend; onnxruntime and numpy<2 installed for its stub):
`tritonserver --model-repository={repo} --disable-auto-complete-config`."""
    text = f"""{head}
On a GPU, several instances (`triton-repo --instances 4`; each holds its own copy of the tables)
let merged executions overlap (docs/triton.md).

## Request format
One request is one query of b samples (any b). Every input has a leading 1 (Triton's batch dim counts
requests); ids come with per-sample **lengths** (TorchRec's KeyedJaggedTensor form), which merge
exactly; the model's offsets are derived from them.

| input | Triton type | request shape |
|---|---|---|
{rows}

{_python_form_text(spec)}

Outputs come back as `[1, b, ...]`. A request that breaks the format, or whose ids fall outside a
table, gets its own error (the op's one-line message; {_position_text(spec)});
the other requests of the same merged batch still get their answers and the model stays ready.
`dlrm_deploy.runtime.triton_client.infer_feeds` builds requests of this form from model feeds.

## Start the server
```
dlrm-deploy triton-serve {repo}      # the tritonserver of nvidia-pytriton, on 127.0.0.1
```
{serve}

{_check_text(onnx_name, name, repo)}"""
    (model_dir / "README.md").write_text(text)
