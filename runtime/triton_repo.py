"""Writes Triton model repositories for exported models (``triton_repo``; ``dlrm-deploy triton-repo``).

``triton_repo(onnx_path, out_dir, backend=...)`` writes ``out_dir/<name>/``: ``config.pbtxt``, the model
(``1/model.onnx`` for onnxruntime, ``1/model.plan`` or ``build_plan.sh`` for tensorrt, ``1/model.py``
+ ``1/model.onnx`` for python), our custom-op or plugin library, ``perf_data.json`` (one valid request
for perf_analyzer) and a README with the exact command lines. Names, element types and dims come from
the ONNX file, never from hand-typed tables.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import stat
import sys
import warnings

from .model_io import ModelIO, describe_onnx, profile_shapes, sample_inputs
from .triton_config import BACKENDS, BATCHING, DEFAULT_CUDA_OPTIONS, config_text, perf_analyzer_data
from .triton_readme import trtexec_shapes, write_python_readme, write_readme

# Mean lookups per bag of perf_data.json and the TensorRT profile when the caller gives none: a
# representative pooling (the paper's DLRM pools 20-150 ids per bag), not 1.
DEFAULT_PERF_POOLING = 20


def _find_library(backend: str) -> pathlib.Path:
    """Our library for `backend` as the other runtime modules find it (FileNotFoundError if not built)."""
    try:
        if backend == "tensorrt":
            from .trt import trt_plugin_library as find
        else:
            from .ort import custom_op_library as find
        return pathlib.Path(find())
    except ImportError as e:
        raise FileNotFoundError(f"the {backend} library is not available ({e}): was it built? (`make build`)") from None


# Where NVIDIA's Triton container is usually given the repository (docker run -v repo:/models).
CONTAINER_ROOT = "/models"


def _check_gpu_library(backend: str, kind: str, library: pathlib.Path) -> None:
    """A KIND_GPU repository whose op library was built without CUDA: ValueError (ONNX Runtime would
    run our op on its CPU provider with copies around it, silently); a warning when the library
    carries no build record to tell."""
    if kind != "gpu" or backend not in ("onnxruntime", *RAGGED_BACKENDS):
        return
    from dlrm_deploy.libraries import build_info

    info = build_info(library.parent)
    ort = info.get("ort") or {}
    if not info:
        warnings.warn(f"{library}: no build_info.json beside it; cannot tell whether it has CUDA kernels for the "
                      "KIND_GPU instances", stacklevel=3)
    elif not (info.get("cuda") or {}).get("built") or "CUDA" not in str(ort.get("providers", "CUDA")):
        why = (info.get("cuda") or {}).get("reason", "no CUDA kernels")
        raise ValueError(f"{library} was built without CUDA ({why}): a KIND_GPU repository needs the CUDA build "
                         "of the op library (rebuild where nvcc is found), or use --kind cpu")


def _copy_onnx(onnx_path: pathlib.Path, io: ModelIO, dest_dir: pathlib.Path) -> None:
    """Copies the ONNX file as dest_dir/model.onnx and its external-data files beside it (the file
    names its data by relative location, so those keep their names)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, dest_dir / "model.onnx")
    for loc in io.external_data:
        src = (onnx_path.parent / loc).resolve()
        dst = (dest_dir / loc).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"external data '{loc}' of {onnx_path} not found at {src}")
        if dest_dir.resolve() not in dst.parents:
            raise ValueError(f"external data location '{loc}' points outside the model folder")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


RAGGED_BACKENDS = ("python", "native")  # take the ragged request format (triton_python.py), merge requests


def _check_arguments(backend, batching, kind, max_batch_size, instances, pooling, plan, lengths,
                     request_form=None, packed_inputs=True, onnxruntime_library=None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is not one of {BACKENDS}")
    if batching not in BATCHING:
        raise ValueError(f"batching '{batching}' is not one of {BATCHING}")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"kind '{kind}' is not gpu or cpu")
    if backend == "tensorrt" and kind != "gpu":
        raise ValueError("the tensorrt backend runs on GPUs only (kind='gpu')")
    if max_batch_size < 1 or instances < 1 or (pooling is not None and pooling < 1):
        raise ValueError("max_batch_size, instances and pooling must be >= 1")
    if plan is not None and backend != "tensorrt":
        raise ValueError("plan= is for the tensorrt backend")
    if lengths and backend != "onnxruntime":
        raise ValueError("lengths=True (ragged batching of the lengths form) is for the onnxruntime backend; "
                         "the python backend takes lengths anyway")
    if request_form is not None and backend not in RAGGED_BACKENDS:
        raise ValueError("request_form (--request-form) is for the python and native backends; the onnxruntime and "
                         "tensorrt backends take the model's own inputs")
    if backend == "native" and request_form not in (None, "packed"):
        raise ValueError("the native backend takes the packed request form only (--request-form packed)")
    if not packed_inputs and backend not in RAGGED_BACKENDS:
        raise ValueError("packed_inputs=False (--keep-model-inputs) is for the python and native backends; the "
                         "onnxruntime and tensorrt backends serve the model's own inputs anyway")
    if onnxruntime_library is not None and backend != "native":
        raise ValueError("onnxruntime_library (--onnxruntime-library) is for the native backend")


def _batched(io: ModelIO, batching: str, onnx_name: str) -> bool:
    """Whether Triton may batch the onnxruntime/tensorrt model along dim 0 (ValueError if asked and impossible)."""
    batchable = io.batch_dim is not None
    if batching == "dynamic" and not batchable:
        ragged = [f"{t.name} ({t.role})" for t in io.inputs if t.role not in ("dense", "output")]
        why = (f"inputs {', '.join(ragged)} are ragged and table-major, so Triton cannot concatenate requests "
               "along dim 0" if ragged else "not every input and output starts with the same symbolic dim")
        raise ValueError(f"dynamic batching is not possible for {onnx_name}: {why}. Send whole batches "
                         "instead (batching='none', the default for such models), or use backend='python', "
                         "which merges ragged requests itself (docs/triton.md).")
    return batchable and batching != "none"


def _new_model_dir(out_dir: pathlib.Path, name: str, overwrite: bool) -> pathlib.Path:
    model_dir = out_dir / name
    if model_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{model_dir} exists (overwrite=True / --force to replace it)")
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    return model_dir


def _write_perf_data(model_dir: pathlib.Path, io: ModelIO, batched: bool, batch: int, pooling: int) -> None:
    """perf_data.json: one valid request (ids inside each table, `pooling` lookups per bag on average)."""
    try:
        if batched:
            sample = {k: v[0] for k, v in sample_inputs(io, batch=1, pooling=pooling).items()}
        else:
            fixed = [t.dims[0] for t in io.inputs if t.role == "dense" and t.dims and isinstance(t.dims[0], int)]
            sample = sample_inputs(io, batch=fixed[0] if fixed else batch, pooling=pooling)
        (model_dir / "perf_data.json").write_text(json.dumps(perf_analyzer_data(sample)))
    except ValueError as e:
        print(f"note: no perf_data.json ({e})", file=sys.stderr)


def _write_build_script(model_dir: pathlib.Path, lib_name: str, prof, extra: list[str], version: int) -> None:
    extra_text = " ".join(shlex.quote(a) for a in extra)
    shape_flags = "".join(f"  --{w}Shapes={trtexec_shapes(prof, i)} \\\n"
                          for i, w in enumerate(("min", "opt", "max"))) if prof else ""
    script = f"""#!/usr/bin/env bash
# Builds {version}/model.plan on THIS machine: a TensorRT engine only runs on the GPU model and TensorRT
# version it was built with, so run this where tritonserver runs (same container release).
# Extra trtexec flags pass through, e.g. ./build_plan.sh --fp16
# Written by dlrm-deploy triton-repo; the shapes cover 1..max samples per request (see README.md).
set -euo pipefail
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
TRTEXEC="${{TRTEXEC:-trtexec}}"
mkdir -p "$HERE/{version}"
# --staticPlugins dlopens the plugin library, which registers dlrm_deploy::EmbeddingBag version 1;
# the ONNX parser then maps the custom node (domain dlrm_deploy) onto it (TensorRT 10.10 or later).
"$TRTEXEC" \\
  --onnx="$HERE/onnx/model.onnx" \\
  --staticPlugins="$HERE/{lib_name}" \\
{shape_flags}  --saveEngine="$HERE/{version}/model.plan" {extra_text} "$@"
echo "wrote $HERE/{version}/model.plan"
"""
    path = model_dir / "build_plan.sh"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _write_python(onnx_path, io, model_dir, library, o) -> None:
    """The python-backend model (triton_python.py) and its README."""
    from .triton_python import request_inputs, write_python_model

    spec = write_python_model(onnx_path, io, model_dir, library, name=o["name"], version=o["version"],
                              max_batch_size=o["max_batch_size"], instances=o["instances"], kind=o["kind"],
                              gpus=o["gpus"], preferred_batch_sizes=o["preferred_batch_sizes"],
                              max_queue_delay_us=o["max_queue_delay_us"], threads=o.get("threads", 0),
                              merge=o["batching"] != "none", form=o["request_form"],
                              packed_inputs=o["packed_inputs"], native=o["backend"] == "native",
                              **({"onnxruntime_library": o["onnxruntime_library"]} if o["backend"] == "native" else {}))
    write_python_readme(model_dir, spec, request_inputs(io, spec), name=o["name"], onnx_name=onnx_path.name,
                        max_batch_size=o["max_batch_size"], max_queue_delay_us=o["max_queue_delay_us"],
                        repo=o["serve_root"], native=o["backend"] == "native")


def _lengths_form(model_path: pathlib.Path, io: ModelIO, o: dict) -> ModelIO:
    """With o["lengths"], rewrites the copied model into the lengths form with flattened dense inputs
    (export/lengths.py; Triton's ragged batching). Returns the description of the served file."""
    if not o.get("lengths"):
        return io
    import onnx

    from dlrm_deploy.export.lengths import to_lengths_form

    onnx.save(to_lengths_form(onnx.load(str(model_path), load_external_data=False), flat_dense=True), str(model_path))
    return describe_onnx(model_path)


def _ragged_source(io: ModelIO) -> str | None:
    """The first per-sample lengths input of a lengths-form model with 1-D dense inputs (ragged
    batching possible), else None."""
    lengths = [t for t in io.inputs if t.role == "lengths"]
    if not lengths or any(len(t.dims) != 1 for t in io.inputs):
        return None
    wide = [t.name for t in io.outputs if any(d != 1 for d in t.dims[1:])]
    if wide:  # scattering by a lengths input gives each request one value per sample
        raise ValueError(f"outputs {wide} have more than one value per sample; ragged batching scatters outputs "
                         "by a lengths input (one value per sample). Use the python backend for this model")
    return lengths[0].name


def _write_onnx_or_trt(onnx_path, io, model_dir, library, o) -> None:
    """config.pbtxt, model files, perf data, build script and README of the onnxruntime/tensorrt backends."""
    backend, name, version = o["backend"], o["name"], o["version"]
    served_model_dir = f"{o['serve_root'].rstrip('/')}/{name}"
    version_dir = model_dir / str(version)
    version_dir.mkdir()
    shutil.copyfile(library, model_dir / library.name)
    if backend == "onnxruntime":
        _copy_onnx(onnx_path, io, version_dir)
        io = _lengths_form(version_dir / "model.onnx", io, o)
    elif o["plan"] is not None:
        shutil.copyfile(o["plan"], version_dir / "model.plan")
    else:
        _copy_onnx(onnx_path, io, model_dir / "onnx")  # source for build_plan.sh; Triton skips non-numeric folders
    ragged = _ragged_source(io) if backend == "onnxruntime" and o["batching"] != "none" else None
    batched = ragged is not None or _batched(io, o["batching"], onnx_path.name)
    if ragged is not None and not o["max_batch_size_given"]:
        o["max_batch_size"] = 64  # ragged: requests per execution
    cfg = config_text(
        io, name, backend, batched=batched, max_batch_size=o["max_batch_size"], instances=o["instances"],
        kind=o["kind"], gpus=o["gpus"],
        op_library=f"{served_model_dir}/{library.name}" if backend == "onnxruntime" else None,
        preferred_batch_sizes=o["preferred_batch_sizes"], max_queue_delay_us=o["max_queue_delay_us"],
        cuda_options=DEFAULT_CUDA_OPTIONS if o["cuda_options"] is None else o["cuda_options"], ragged_source=ragged)
    (model_dir / "config.pbtxt").write_text(cfg)
    pooling = o["pooling"] or DEFAULT_PERF_POOLING
    perf_batch = 64 if ragged else min(o["opt_batch_size"] or o["max_batch_size"], 1024)
    _write_perf_data(model_dir, io, batched and ragged is None, perf_batch, pooling)
    prof = None
    if backend == "tensorrt" and o["plan"] is None:
        prof = profile_shapes(io, o["max_batch_size"], o["opt_batch_size"], pooling, o["shapes"])
        _write_build_script(model_dir, library.name, prof, o["trtexec_args"] or [], version)
    write_readme(model_dir, io, name=name, backend=backend, batched=batched, max_batch_size=o["max_batch_size"],
                 pooling=pooling, served_model_dir=served_model_dir, serve_root=o["serve_root"],
                 lib_name=library.name, has_plan=o["plan"] is not None,
                 has_perf=(model_dir / "perf_data.json").exists(), prof=prof, onnx_name=onnx_path.name, ragged=ragged)


def triton_repo(onnx_path, out_dir, backend: str = "onnxruntime", name: str = "dlrm", *,
                max_batch_size: int | None = None, opt_batch_size: int | None = None, pooling: int | None = None,
                instances: int = 1, kind: str = "gpu", gpus: list[int] | None = None,
                batching: str = "auto", preferred_batch_sizes: list[int] | None = None,
                max_queue_delay_us: int | None = None, library=None, plan=None, serve_root: str | None = None,
                cuda_options: dict | None = None, shapes: dict | None = None,
                trtexec_args: list[str] | None = None, version: int = 1, validate: bool | None = None,
                overwrite: bool = False, threads: int = 0, lengths: bool = False,
                request_form: str | None = None, packed_inputs: bool = True,
                onnxruntime_library: str | None = None) -> pathlib.Path:
    """Writes a Triton model repository for an exported model; returns ``out_dir/<name>``.

    onnx_path: the exported ONNX file. backend: "onnxruntime", "tensorrt", "python" (ONNX Runtime
    inside Triton's python backend, merging ragged requests itself; see triton_python.py) or "native"
    (the same repository for our C++ backend, ``backend: "dlrm_deploy"``: plugins/triton/; packed
    request form only; every python-backend option below applies to it too).
    max_batch_size: onnxruntime/tensorrt: most samples per request (default 1024; with
    ``max_batch_size: 0`` in the config it bounds the TensorRT profile and perf data; for a batchable
    model it is Triton's max_batch_size); python: most requests merged into one execution (default 64).
    opt_batch_size: samples per request TensorRT tunes for (default max_batch_size). pooling: lookups
    per bag (mean) for the TensorRT profile's ids count (T*B*pooling) and perf_data.json (default 20). instances: model instances per GPU (each holds its own copy of the tables). kind:
    "gpu" or "cpu". batching (onnxruntime/tensorrt): "auto" (dynamic batching exactly when every input
    and output shares one symbolic leading dim), "none" or "dynamic" (an error for models with
    EmbeddingBag inputs); python: "none" writes max_batch_size 1 without a batcher (one request per
    execution, the baseline dynamic batching is measured against). max_queue_delay_us: the dynamic
    batcher's wait (default 100; python 500).
    library: our custom-op (onnxruntime, python) or plugin (tensorrt) library, default the built one.
    plan: a TensorRT engine built on the serving GPU and TensorRT version; without it
    ``build_plan.sh`` builds one there. serve_root: the repository's path as the server sees it,
    written into the onnxruntime/tensorrt configs' library paths (default ``/models``, where NVIDIA's
    container is usually given it: ``docker run -v $PWD/repo:/models``; pass the absolute out_dir for
    a server on this machine; python backend: out_dir, for its README only). A KIND_GPU repository
    (onnxruntime, python) with an op library built without CUDA is refused. cuda_options: CUDA execution-provider options (onnxruntime).
    shapes: ``{input: (min, opt, max)}`` overriding the derived TensorRT profile. trtexec_args:
    extra trtexec flags for build_plan.sh. threads: python backend's ONNX Runtime intra-op threads
    (0: its default). lengths (onnxruntime): serve the lengths form of the exported model
    (export/lengths.py: per-sample lengths for offsets, dense inputs flattened) with Triton's ragged
    batching: every input ``allow_ragged_batch``, outputs scattered back per request by a lengths
    input's shape (``batch_output``), max_batch_size counting requests (default 64); a model already
    in that form gets it without the flag. request_form (python): "packed" (default: dense inputs
    plus one ids, one lengths and one weights input for all tables, INT32 ids on the wire unless a
    table has more than 2^31 rows, then INT64) or "tables" (one ids and one lengths input per model
    ids/offsets input, the model's own types). packed_inputs (python, packed form): serve the model
    with a fused lookup node's per-table ids/offsets inputs packed into one each, int32 where the
    tables allow (export/packed_inputs.py; False: as exported). onnxruntime_library (native): the
    libonnxruntime.so the backend opens, as the server sees it (default: this environment's
    onnxruntime package's). validate: parse the written config with Triton's schema and compare it with
    the model file (True: required, needs tritonclient; None: whenever tritonclient is installed).
    """
    max_batch_size_given = max_batch_size is not None
    if max_batch_size is None:
        max_batch_size = 64 if backend in RAGGED_BACKENDS else 1024
    if max_queue_delay_us is None:
        max_queue_delay_us = 500 if backend in RAGGED_BACKENDS else 100
    _check_arguments(backend, batching, kind, max_batch_size, instances, pooling, plan, lengths, request_form,
                     packed_inputs, onnxruntime_library)
    onnx_path = pathlib.Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} not found")
    io = describe_onnx(onnx_path)
    if backend in RAGGED_BACKENDS:
        from .triton_python import DEFAULT_FORM, io_spec, onnxruntime_library_path

        request_form = request_form or DEFAULT_FORM
        io_spec(io, request_form)  # refuses models it cannot merge before anything is written
        if backend == "native" and onnxruntime_library is None:
            onnxruntime_library = onnxruntime_library_path()
    library = pathlib.Path(library) if library is not None else _find_library(backend)
    if not library.is_file():
        raise FileNotFoundError(f"library {library} not found")
    _check_gpu_library(backend, kind, library)
    if plan is not None and not pathlib.Path(plan).is_file():
        raise FileNotFoundError(f"TensorRT plan {plan} not found")
    out_dir = pathlib.Path(out_dir)
    model_dir = _new_model_dir(out_dir, name, overwrite)
    opts = dict(backend=backend, name=name, version=version, max_batch_size=max_batch_size,
                opt_batch_size=opt_batch_size, pooling=pooling, instances=instances, kind=kind, gpus=gpus,
                batching=batching, preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
                plan=plan,
                serve_root=serve_root or (str(out_dir.resolve()) if backend in RAGGED_BACKENDS else CONTAINER_ROOT),
                cuda_options=cuda_options, shapes=shapes,
                trtexec_args=trtexec_args, threads=threads, lengths=lengths, max_batch_size_given=max_batch_size_given,
                request_form=request_form, packed_inputs=packed_inputs, onnxruntime_library=onnxruntime_library)
    (_write_python if backend in RAGGED_BACKENDS else _write_onnx_or_trt)(onnx_path, io, model_dir, library, opts)
    _validate_written(model_dir, onnx_path if backend == "tensorrt" else None, validate)  # else: the served copy
    return model_dir


def _validate_written(model_dir: pathlib.Path, onnx_path, validate: bool | None) -> None:
    from .triton_validate import load_config, validate_repo

    if validate is None:
        try:
            load_config(model_dir / "config.pbtxt")
            validate = True
        except ImportError:
            print("note: tritonclient is not installed, so config.pbtxt was not checked against Triton's "
                  "schema (pip install tritonclient[grpc])", file=sys.stderr)
    if validate:
        validate_repo(model_dir, onnx_path)
