"""Triton Inference Server model repositories for exported DLRM models (`dlrm-deploy triton-repo`).

``triton_repo(onnx_path, out_dir, backend=...)`` writes ``out_dir/<name>/``: ``config.pbtxt``,
``1/model.onnx`` (onnxruntime backend, with its external-data files) or ``1/model.plan`` (tensorrt
backend), our custom-op or plugin library, a README with the exact ``tritonserver`` and
``perf_analyzer`` command lines, ``perf_data.json`` (a valid request for perf_analyzer) and, for
TensorRT without a plan, ``build_plan.sh``. Input and output names, element types and dims come from
the ONNX file, never from hand-typed tables.

Batching (see docs/triton.md): our ``EmbeddingBag`` inputs are ragged and table-major (indices ``[N]``,
offsets ``[T*B(+1)]``), so Triton must not concatenate two requests along dim 0. Such models get
``max_batch_size: 0`` (dims are the full shapes, ``-1`` where the ONNX dim is symbolic) and no dynamic
batcher: the client sends whole batches. Only a model whose every input and output share one
symbolic leading dim can use ``max_batch_size > 0`` and dynamic batching.

Nothing here needs a GPU, Triton or TensorRT; ``validate_repo`` needs ``tritonclient`` (its
``model_config_pb2`` is Triton's own configuration schema).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import stat
import sys

import numpy as np

from dlrm_deploy import contract as C

ORT_LIBRARY = "libdlrm_deploy_ort.so"
TRT_LIBRARY = "libdlrm_deploy_trt.so"
BACKENDS = ("onnxruntime", "tensorrt")
BATCHING = ("auto", "none", "dynamic")

# ONNX TensorProto element type -> (Triton TYPE_*, perf_analyzer/tritonclient datatype, numpy dtype)
_ONNX_TO_TRITON = {
    1: ("TYPE_FP32", "FP32", "float32"),
    2: ("TYPE_UINT8", "UINT8", "uint8"),
    3: ("TYPE_INT8", "INT8", "int8"),
    4: ("TYPE_UINT16", "UINT16", "uint16"),
    5: ("TYPE_INT16", "INT16", "int16"),
    6: ("TYPE_INT32", "INT32", "int32"),
    7: ("TYPE_INT64", "INT64", "int64"),
    8: ("TYPE_STRING", "BYTES", "object"),
    9: ("TYPE_BOOL", "BOOL", "bool"),
    10: ("TYPE_FP16", "FP16", "float16"),
    11: ("TYPE_FP64", "FP64", "float64"),
    12: ("TYPE_UINT32", "UINT32", "uint32"),
    13: ("TYPE_UINT64", "UINT64", "uint64"),
    16: ("TYPE_BF16", "BF16", None),  # numpy has no bfloat16; tritonclient sends it as raw bytes
}

# Ops that only change dtype or rank between a graph input and the op's indices/offsets input.
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# EmbeddingBag input slot -> role of the graph input feeding it.
_ROLE_SLOTS = {1: "indices", 2: "offsets", 3: "per_sample_weights"}


def triton_dtype(elem_type: int) -> str:
    """Triton ``TYPE_*`` name of an ONNX ``TensorProto`` element type; ValueError if Triton has none."""
    try:
        return _ONNX_TO_TRITON[elem_type][0]
    except KeyError:
        raise ValueError(f"ONNX element type {elem_type} has no Triton equivalent") from None


# --------------------------------------------------------------------------------------------------
# What the ONNX file says
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tensor:
    """One graph input or output: name, ONNX element type, dims (int, or str for a symbolic dim,
    or None for an unnamed unknown dim)."""

    name: str
    elem_type: int
    dims: list
    role: str = "dense"  # dense | indices | offsets | per_sample_weights | output
    bag: int = -1  # index into ModelIO.bags for role indices/offsets/per_sample_weights
    resolved: dict = dataclasses.field(default_factory=dict)  # symbolic dim index -> size implied by the graph

    @property
    def triton_dims(self) -> list[int]:
        """Dims as Triton writes them: -1 for every dim that is not a fixed number."""
        return [d if isinstance(d, int) else -1 for d in self.dims]


@dataclasses.dataclass
class ModelIO:
    """Inputs, outputs and EmbeddingBag nodes of an ONNX model (external data is never loaded)."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    bags: list[dict]  # per EmbeddingBag node: its attributes with the contract's defaults filled in
    external_data: list[str]  # relative locations of external-data files

    @property
    def batch_dim(self):
        """The symbol every input and output starts with, or None: None means Triton must not batch."""
        tensors = self.inputs + self.outputs
        if not tensors or any(t.role not in ("dense", "output") for t in tensors):
            return None
        first = {t.dims[0] if t.dims else None for t in tensors}
        if len(first) != 1:
            return None
        (sym,) = first
        return sym if isinstance(sym, str) else None


def describe_onnx(onnx_path) -> ModelIO:
    """Reads names, element types and dims of the graph's inputs and outputs, and which inputs feed
    the indices / offsets / per-sample weights of each ``dlrm_deploy::EmbeddingBag`` node."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    initializers = {t.name for t in g.initializer}

    def tensor(vi, role):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"'{vi.name}' is not a tensor; Triton configs here only handle tensors")
        if not tt.HasField("shape"):
            raise ValueError(f"'{vi.name}' has no shape in the ONNX file (not even its rank); re-export "
                             "with shapes or run onnx.shape_inference so the config can be derived from it")
        dims = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        return Tensor(vi.name, tt.elem_type, dims, role)

    inputs = [tensor(vi, "dense") for vi in g.input if vi.name not in initializers]
    outputs = [tensor(vi, "output") for vi in g.output]
    by_name = {t.name: t for t in inputs}
    producer = {o: n for n in g.node for o in n.output}

    bags = []
    for node in g.node:
        if node.domain != C.DOMAIN or node.op_type != C.OP_TYPE:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        attrs = C.validate_attributes(attrs)
        bag = len(bags)
        bags.append(attrs)
        for slot, role in _ROLE_SLOTS.items():
            if slot >= len(node.input) or not node.input[slot]:
                continue
            name = node.input[slot]
            while name not in by_name and name in producer and producer[name].op_type in _PASS_THROUGH:
                name = producer[name].input[0]
            if name in by_name:
                by_name[name].role, by_name[name].bag = role, bag

    # The exporter keeps one indices and one offsets input per table (fused in the graph) and names
    # them in its metadata; that is more reliable than tracing through the fusing Concat/Add nodes.
    meta = {p.key: p.value for p in model.metadata_props}
    if "dlrm_deploy.tables" in meta:
        for table in json.loads(meta["dlrm_deploy.tables"]):
            if table.get("indices") in by_name and table.get("offsets") in by_name:
                bag = len(bags)
                bags.append({"table_rows": [int(table["rows"])],
                             "include_last_offset": int(table.get("include_last_offset", 0))})
                by_name[table["indices"]].role, by_name[table["indices"]].bag = "indices", bag
                by_name[table["offsets"]].role, by_name[table["offsets"]].bag = "offsets", bag

    # Widths the file leaves symbolic but fixes through a weight (dense -> Gemm/MatMul), for
    # sample requests and TensorRT profiles only; the config keeps the file's dims.
    inits = {t.name: list(t.dims) for t in g.initializer}
    for n in g.node:
        if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2 or n.input[0] not in by_name:
            continue
        t, w = by_name[n.input[0]], inits.get(n.input[1])
        if t.role != "dense" or not w or len(w) != 2 or len(t.dims) != 2 or isinstance(t.dims[1], int):
            continue
        trans_b = any(a.name == "transB" and a.i for a in n.attribute) if n.op_type == "Gemm" else False
        t.resolved = {1: w[1] if trans_b else w[0]}

    external = sorted({e.value for t in g.initializer for e in t.external_data if e.key == "location"})
    return ModelIO(inputs, outputs, bags, external)


# --------------------------------------------------------------------------------------------------
# Shapes and sample requests
# --------------------------------------------------------------------------------------------------

def _shape_for(t: Tensor, io: ModelIO, batch: int, pooling: int) -> list[int]:
    """Concrete shape of input t for `batch` samples and `pooling` lookups per bag."""
    fixed = [d if isinstance(d, int) else t.resolved.get(i) for i, d in enumerate(t.dims)]
    if t.role == "dense":
        free = [i for i, d in enumerate(fixed) if d is None]
        if free and free != [0]:
            raise ValueError(f"input '{t.name}' {t.dims}: only its first dim may be symbolic (the batch); "
                             "give its shapes explicitly (shapes= / --shape)")
        return [batch if d is None else d for d in fixed]
    bag = io.bags[t.bag]
    tables = len(bag["table_rows"])
    n = tables * batch * pooling if t.role != "offsets" else tables * batch + bag["include_last_offset"]
    if len(fixed) != 1:
        raise ValueError(f"input '{t.name}' ({t.role}) has rank {len(fixed)}, expected 1; give its shapes explicitly")
    if fixed[0] is not None and fixed[0] != n:
        raise ValueError(f"input '{t.name}' ({t.role}) has the fixed size {fixed[0]}, but {batch} samples with "
                         f"{pooling} lookups per bag need {n}")
    return [n]


def profile_shapes(io: ModelIO, max_batch: int, opt_batch: int | None = None, pooling: int = 1,
                   shapes: dict | None = None) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """TensorRT optimization-profile shapes ``{input: (min, opt, max)}`` for 1..max_batch samples
    per request and at most `pooling` lookups per bag on average (indices count up to T*B*pooling).
    `shapes` overrides inputs by name with explicit ``(min, opt, max)`` lists."""
    opt_batch = opt_batch or max_batch
    shapes = shapes or {}
    out = {}
    for t in io.inputs:
        if t.name in shapes:
            out[t.name] = tuple(list(s) for s in shapes[t.name])
            continue
        if all(isinstance(d, int) for d in t.dims):
            continue  # static inputs take no profile (trtexec rejects shapes for them)
        lo = _shape_for(t, io, 1, 1)
        if t.role in ("indices", "per_sample_weights"):
            lo = [1]  # at least one lookup per request keeps every dim non-zero
        out[t.name] = (lo, _shape_for(t, io, opt_batch, pooling), _shape_for(t, io, max_batch, pooling))
    return out


def sample_inputs(io_or_path, batch: int = 8, pooling: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid request for `batch` samples: dense inputs ~ N(0, 1), `pooling` lookups per bag with
    row ids uniform in each table's range, table-major offsets; dtypes from the ONNX file."""
    io = io_or_path if isinstance(io_or_path, ModelIO) else describe_onnx(io_or_path)
    rng = np.random.default_rng(seed)
    out = {}
    for t in io.inputs:
        np_dtype = _ONNX_TO_TRITON.get(t.elem_type, (None, None, None))[2]
        if np_dtype in (None, "object"):
            raise ValueError(f"input '{t.name}': no sample data for ONNX element type {t.elem_type}")
        shape = _shape_for(t, io, batch, pooling)
        if t.role == "dense":
            if np.issubdtype(np.dtype(np_dtype), np.floating):
                out[t.name] = rng.standard_normal(shape).astype(np_dtype)
            else:
                out[t.name] = rng.integers(0, 2, size=shape).astype(np_dtype)
            continue
        bag = io.bags[t.bag]
        rows = bag["table_rows"]
        if t.role == "indices":
            ids = [rng.integers(0, r, size=batch * pooling) for r in rows]  # table-major
            out[t.name] = np.concatenate(ids).astype(np_dtype)
        elif t.role == "offsets":
            offs = np.arange(len(rows) * batch, dtype=np.int64) * pooling
            if bag["include_last_offset"]:
                offs = np.append(offs, len(rows) * batch * pooling)
            out[t.name] = offs.astype(np_dtype)
        else:
            out[t.name] = rng.random(shape).astype(np_dtype)
    return out


def perf_analyzer_data(inputs: dict[str, np.ndarray]) -> dict:
    """perf_analyzer ``--input-data`` JSON for one request (content flattened, shape explicit)."""
    return {"data": [{name: {"content": a.reshape(-1).tolist(), "shape": list(a.shape)}
                      for name, a in inputs.items()}]}


# --------------------------------------------------------------------------------------------------
# config.pbtxt
# --------------------------------------------------------------------------------------------------

def _dims_text(dims) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid protobuf text-format string here


def config_text(io: ModelIO, name: str, backend: str, *, batched: bool, max_batch_size: int,
                instances: int = 1, kind: str = "gpu", gpus: list[int] | None = None,
                op_library: str | None = None, preferred_batch_sizes: list[int] | None = None,
                max_queue_delay_us: int = 0, cuda_options: dict | None = None) -> str:
    """The text of config.pbtxt (protobuf text format of Triton's ``inference.ModelConfig``)."""
    lines = [f"# Written by dlrm-deploy triton-repo from the ONNX file's inputs and outputs.",
             f"name: {_q(name)}"]
    if backend == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "tensorrt"', 'platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    if batched:
        lines.append(f"max_batch_size: {max_batch_size}")
    else:
        lines += ["# 0: the EmbeddingBag inputs (indices [N], offsets [T*B]) are ragged and table-major, so",
                  "# requests must not be concatenated along dim 0; every request carries a whole batch of",
                  f"# up to {max_batch_size} samples (docs/triton.md).",
                  "max_batch_size: 0"]

    def io_block(key, tensors):
        out = [f"{key} ["]
        for i, t in enumerate(tensors):
            dims = t.triton_dims[1:] if batched else t.triton_dims
            role = "" if t.role in ("dense", "output") else f"  # {t.role} of EmbeddingBag #{t.bag}"
            out += ["  {" + role, f"    name: {_q(t.name)}", f"    data_type: {triton_dtype(t.elem_type)}",
                    f"    dims: {_dims_text(dims)}", "  }" + ("," if i + 1 < len(tensors) else "")]
        return out + ["]"]

    lines += io_block("input", io.inputs) + io_block("output", io.outputs)
    group = [f"    count: {instances}", f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}"]
    if gpus and kind == "gpu":
        group.append(f"    gpus: {_dims_text(gpus)}")
    lines += ["instance_group [", "  {"] + group + ["  }", "]"]
    if batched:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_dims_text(preferred_batch_sizes)}")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    if op_library:
        lines += ["# The custom-op library registers dlrm_deploy::EmbeddingBag with ONNX Runtime; the backend",
                  "# dlopens this path as it stands, so it is absolute (where the server sees the repository).",
                  "model_operations {", f"  op_library_filename: [ {_q(op_library)} ]", "}"]
    if backend == "onnxruntime" and kind == "gpu" and cuda_options:
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [", "      {",
                  '        name: "cuda"']
        for k, v in cuda_options.items():
            lines.append(f"        parameters {{ key: {_q(k)} value: {_q(str(v))} }}")
        lines += ["      }", "    ]", "  }", "}"]
    return "\n".join(lines) + "\n"


# CUDA execution-provider options for the onnxruntime backend. Request sizes vary (N lookups), so
# growing the arena by exactly what is asked wastes less memory than powers of two.
DEFAULT_CUDA_OPTIONS = {"arena_extend_strategy": "kSameAsRequested"}


# --------------------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------------------

def _find_library(backend: str) -> pathlib.Path:
    """Our library for `backend` as the other runtime modules find it (FileNotFoundError if not built)."""
    try:
        if backend == "onnxruntime":
            from .ort import custom_op_library as find
        else:
            from .trt import trt_plugin_library as find
        return pathlib.Path(find())
    except ImportError:
        from ._lib import library_dir

        path = library_dir() / (ORT_LIBRARY if backend == "onnxruntime" else TRT_LIBRARY)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: was it built? (`make build`)") from None
        return path


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


def _trtexec_shapes(prof, which: int) -> str:
    return ",".join(f"{n}:" + "x".join(str(d) for d in s[which]) for n, s in prof.items())


def triton_repo(onnx_path, out_dir, backend: str = "onnxruntime", name: str = "dlrm", *,
                max_batch_size: int = 1024, opt_batch_size: int | None = None, pooling: int = 1,
                instances: int = 1, kind: str = "gpu", gpus: list[int] | None = None,
                batching: str = "auto", preferred_batch_sizes: list[int] | None = None,
                max_queue_delay_us: int = 100, library=None, plan=None, serve_root: str | None = None,
                cuda_options: dict | None = None, shapes: dict | None = None,
                trtexec_args: list[str] | None = None, version: int = 1, validate: bool | None = None,
                overwrite: bool = False) -> pathlib.Path:
    """Writes a Triton model repository for an exported model; returns ``out_dir/<name>``.

    onnx_path: the exported ONNX file. backend: "onnxruntime" or "tensorrt". max_batch_size: most
    samples per request (with ``max_batch_size: 0`` in the config it bounds the TensorRT profile and
    perf data; for a batchable model it is Triton's max_batch_size). opt_batch_size: samples per
    request TensorRT tunes for (default max_batch_size). pooling: lookups per bag (mean) for the
    TensorRT profile's indices count (T*B*pooling) and the sample request. instances: model
    instances per GPU (each holds its own copy of the tables). kind: "gpu" or "cpu". batching:
    "auto" (dynamic batching exactly when every input and output shares one symbolic leading dim),
    "none" or "dynamic" (an error for models with EmbeddingBag inputs). library: our custom-op
    (onnxruntime) or plugin (tensorrt) library, default the built one. plan: a TensorRT engine built
    on the serving GPU and TensorRT version; without it ``build_plan.sh`` builds one there.
    serve_root: the repository's path as the server sees it (default: out_dir, absolute).
    cuda_options: CUDA execution-provider options (onnxruntime). shapes: ``{input: (min, opt, max)}``
    overriding the derived TensorRT profile. trtexec_args: extra trtexec flags for build_plan.sh.
    validate: parse the written config with Triton's schema and compare it with the model file
    (True: required, needs tritonclient; None: whenever tritonclient is installed; False: never).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is not one of {BACKENDS}")
    if batching not in BATCHING:
        raise ValueError(f"batching '{batching}' is not one of {BATCHING}")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"kind '{kind}' is not gpu or cpu")
    if backend == "tensorrt" and kind != "gpu":
        raise ValueError("the tensorrt backend runs on GPUs only (kind='gpu')")
    if max_batch_size < 1 or instances < 1 or pooling < 1:
        raise ValueError("max_batch_size, instances and pooling must be >= 1")
    if plan is not None and backend != "tensorrt":
        raise ValueError("plan= is for the tensorrt backend")
    onnx_path = pathlib.Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} not found")
    io = describe_onnx(onnx_path)

    batchable = io.batch_dim is not None
    if batching == "dynamic" and not batchable:
        ragged = [f"{t.name} ({t.role})" for t in io.inputs if t.role not in ("dense", "output")]
        why = (f"inputs {', '.join(ragged)} are ragged and table-major, so Triton cannot concatenate requests "
               "along dim 0" if ragged else "not every input and output starts with the same symbolic dim")
        raise ValueError(f"dynamic batching is not possible for {onnx_path.name}: {why}. Send whole batches "
                         "instead (batching='none', the default for such models; docs/triton.md).")
    batched = batchable and batching != "none"

    library = pathlib.Path(library) if library is not None else _find_library(backend)
    if not library.is_file():
        raise FileNotFoundError(f"library {library} not found")
    if plan is not None and not pathlib.Path(plan).is_file():
        raise FileNotFoundError(f"TensorRT plan {plan} not found")

    out_dir = pathlib.Path(out_dir)
    model_dir = out_dir / name
    if model_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{model_dir} exists (overwrite=True / --force to replace it)")
        shutil.rmtree(model_dir)
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    serve_root = serve_root or str(out_dir.resolve())
    served_model_dir = f"{serve_root.rstrip('/')}/{name}"

    lib_name = library.name
    shutil.copyfile(library, model_dir / lib_name)
    if backend == "onnxruntime":
        _copy_onnx(onnx_path, io, version_dir)
    elif plan is not None:
        shutil.copyfile(plan, version_dir / "model.plan")
    else:
        _copy_onnx(onnx_path, io, model_dir / "onnx")  # source for build_plan.sh; Triton skips non-numeric folders

    cfg = config_text(
        io, name, backend, batched=batched, max_batch_size=max_batch_size, instances=instances, kind=kind,
        gpus=gpus, op_library=f"{served_model_dir}/{lib_name}" if backend == "onnxruntime" else None,
        preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
        cuda_options=DEFAULT_CUDA_OPTIONS if cuda_options is None else cuda_options)
    (model_dir / "config.pbtxt").write_text(cfg)

    # perf_analyzer request and TensorRT profile (both need every input's role or explicit shapes).
    prof = None
    try:
        opt = opt_batch_size or max_batch_size
        if batched:
            sample = {k: v[0] for k, v in sample_inputs(io, batch=1, pooling=pooling).items()}
        else:
            fixed = [t.dims[0] for t in io.inputs if t.role == "dense" and t.dims and isinstance(t.dims[0], int)]
            sample = sample_inputs(io, batch=fixed[0] if fixed else min(opt, 1024), pooling=pooling)
        (model_dir / "perf_data.json").write_text(json.dumps(perf_analyzer_data(sample)))
    except ValueError as e:
        print(f"note: no perf_data.json ({e})", file=sys.stderr)
    if backend == "tensorrt" and plan is None:
        prof = profile_shapes(io, max_batch_size, opt_batch_size, pooling, shapes)
        _write_build_script(model_dir, lib_name, prof, trtexec_args or [], version)

    _write_readme(model_dir, io, name=name, backend=backend, batched=batched, max_batch_size=max_batch_size,
                  pooling=pooling, served_model_dir=served_model_dir, serve_root=serve_root, lib_name=lib_name,
                  has_plan=plan is not None, has_perf=(model_dir / "perf_data.json").exists(), prof=prof,
                  onnx_name=onnx_path.name)
    if validate is None:
        try:
            load_config(model_dir / "config.pbtxt")
            validate = True
        except ImportError:
            print("note: tritonclient is not installed, so config.pbtxt was not checked against Triton's "
                  "schema (pip install tritonclient[grpc])", file=sys.stderr)
    if validate:
        validate_repo(model_dir, onnx_path)
    return model_dir


def _write_build_script(model_dir: pathlib.Path, lib_name: str, prof, extra: list[str], version: int) -> None:
    extra_text = " ".join(shlex.quote(a) for a in extra)
    shape_flags = "".join(f"  --{w}Shapes={_trtexec_shapes(prof, i)} \\\n"
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


def _write_readme(model_dir, io: ModelIO, *, name, backend, batched, max_batch_size, pooling, served_model_dir,
                  serve_root, lib_name, has_plan, has_perf, prof, onnx_name) -> None:
    rows = "\n".join(
        f"| `{t.name}` | {'input' if t.role != 'output' else 'output'} | {t.role} | {triton_dtype(t.elem_type)} | "
        f"`{t.triton_dims}` |" for t in io.inputs + io.outputs)
    if backend == "onnxruntime":
        server = f"tritonserver --model-repository={serve_root} --disable-auto-complete-config"
        loading = (f"`config.pbtxt` names the custom-op library in `model_operations` by its absolute path\n"
                   f"`{served_model_dir}/{lib_name}`: the onnxruntime backend registers it with every session it\n"
                   "creates. If the server sees the repository at another path, regenerate with `--serve-root`\n"
                   "(or edit that one line). The library must be the CUDA build, and built against an ONNX Runtime\n"
                   "API version no newer than the ONNX Runtime inside the Triton release you run.")
        build = ""
    else:
        plugins = f"{served_model_dir}/{lib_name}"
        server = (f"tritonserver --model-repository={serve_root} --disable-auto-complete-config \\\n"
                  f"    --backend-config=tensorrt,plugins=\"{plugins}\"")
        loading = ("TensorRT needs the plugin registered before it deserializes the engine. The command above\n"
                   "lets the tensorrt backend load it (`plugins=` takes several libraries separated by `;`). The\n"
                   "alternative is to preload it into the server process:\n\n"
                   f"```\nLD_PRELOAD={plugins}${{LD_PRELOAD:+:$LD_PRELOAD}} tritonserver --model-repository={serve_root} "
                   "--disable-auto-complete-config\n```\n\n"
                   "Use the plugin library built against the TensorRT version of that Triton release.")
        if has_plan:
            build = ("`1/model.plan` was given to `triton-repo`. A plan only runs on the GPU model and TensorRT\n"
                     "version it was built with; if the server differs, rebuild it there.\n")
        else:
            profile = ("\n".join(f"  {w:<4} {_trtexec_shapes(prof, i)}" for i, w in enumerate(("min", "opt", "max")))
                       if prof else "  (static shapes: no profile)")
            build = ("No engine is included: a plan only runs on the GPU model and TensorRT version it was built\n"
                     "with. On the serving machine (inside the Triton container, whose trtexec matches the\n"
                     "server's TensorRT), build it once before starting the server:\n\n"
                     f"```\n{served_model_dir}/build_plan.sh            # add --fp16 etc. as needed\n```\n\n"
                     f"Optimization profile (trtexec syntax):\n```\n{profile}\n```\n"
                     f"(up to {max_batch_size} samples per request and {pooling} lookup(s) per bag on average;\n"
                     "regenerate with other `--max-batch-size` / `--pooling` / `--shape` values to change it).\n")
    if batched:
        batching = (f"All inputs and outputs share a leading batch dim, so the config uses `max_batch_size:\n"
                    f"{max_batch_size}` and the dynamic batcher; dims above include that batch dim, the config's\n"
                    "do not.")
        perf = (f"perf_analyzer -m {name} -i grpc -u localhost:8001 -b 1 "
                + ("--input-data perf_data.json " if has_perf else "")
                + "--concurrency-range 1:16")
    else:
        batching = (
            "`max_batch_size: 0`, no dynamic batcher. The `EmbeddingBag` inputs are not batched by sample:\n"
            "`indices` holds every lookup of every table in table-major order and `offsets` the start of\n"
            "each bag (table t, sample b at position t*B+b). Concatenating two requests along dim 0, which\n"
            "is what Triton's batcher does, would interleave tables and leave the offsets pointing at the\n"
            "first request's lookups: wrong results. So each request carries a whole batch (B samples,\n"
            f"here up to {max_batch_size}), dims are the full ONNX shapes with -1 for variable sizes, and\n"
            "throughput comes from large client batches and concurrent requests over several instances.\n"
            "`--disable-auto-complete-config` keeps the server from guessing a batch size: every input\n"
            "starts with a variable dim, which auto-complete would take for a batch dim.")
        perf = (f"perf_analyzer -m {name} -i grpc -u localhost:8001 "
                + ("--input-data perf_data.json " if has_perf else "--shape NAME:DIMS ... ")
                + "--concurrency-range 1:16")
    perf_note = ("Run it from this folder (or give the path of `perf_data.json`, which is one valid request:\n"
                 "row ids inside each table, so checked mode passes); perf_analyzer's random data would index\n"
                 "outside the tables and fail.") if has_perf else (
                 "No `perf_data.json` could be derived from this model: give perf_analyzer valid row ids\n"
                 "with `--input-data`, since random data would index outside the tables.")
    text = f"""# Triton model `{name}` ({backend} backend)

Written by `dlrm-deploy triton-repo` from `{onnx_name}`. Triton Inference Server itself was not run
when this was written. The files follow Triton's model-configuration schema and the model file's
inputs and outputs; `dlrm_deploy.runtime.triton.validate_repo` checks both (with the
`model_config.proto` shipped in `tritonclient`).

## Inputs and outputs (from the ONNX file)
| name | kind | role | Triton type | ONNX dims (-1 = variable) |
|---|---|---|---|---|
{rows}

## Batching
{batching}

## Engine
{build or "`1/model.onnx` (with any external-data files beside it) runs in the onnxruntime backend."}

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

## Check the answers
From a dlrm-deploy checkout:
```
python scripts/triton_client.py --onnx {onnx_name} --model {name} --protocol grpc --url localhost:8001
python scripts/triton_client.py --onnx {onnx_name} --model {name} --protocol http --url localhost:8000
```
sends one batch and compares the server's output with ONNX Runtime run locally on the same ONNX file.
"""
    (model_dir / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def load_config(config_path):
    """Parses config.pbtxt with Triton's schema (``tritonclient.grpc.model_config_pb2.ModelConfig``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ImportError("validating a Triton config needs `pip install tritonclient[grpc]` "
                          "(it ships Triton's model_config.proto)") from e
    return text_format.Parse(pathlib.Path(config_path).read_text(), model_config_pb2.ModelConfig())


def validate_repo(model_dir, onnx_path=None):
    """Checks ``model_dir/config.pbtxt`` against Triton's schema and the model's ONNX file (default:
    the copy in the repository): every input and output with the same name, type and dims, in the
    batching mode the model allows, and the files the backend will open. Returns the parsed config;
    raises ValueError listing every mismatch."""
    model_dir = pathlib.Path(model_dir)
    cfg = load_config(model_dir / "config.pbtxt")
    from tritonclient.grpc import model_config_pb2 as pb

    errors = []
    backend = cfg.backend or ("tensorrt" if cfg.platform == "tensorrt_plan" else cfg.platform)
    if backend not in BACKENDS:
        errors.append(f"backend '{cfg.backend}' / platform '{cfg.platform}' is not onnxruntime or tensorrt")
    if cfg.name != model_dir.name:
        errors.append(f"config name '{cfg.name}' differs from the folder name '{model_dir.name}'")
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        errors.append("no numeric version folder")
    if onnx_path is None:
        candidates = [model_dir / "onnx" / "model.onnx"] + [v / "model.onnx" for v in versions]
        onnx_path = next((c for c in candidates if c.is_file()), None)
        if onnx_path is None:
            raise ValueError(f"{model_dir}: no ONNX file to compare with; pass onnx_path")
    io = describe_onnx(onnx_path)
    batched = cfg.max_batch_size > 0
    if batched and io.batch_dim is None:
        errors.append("max_batch_size > 0, but the model's inputs do not all share a leading batch dim")
    if cfg.HasField("dynamic_batching") and not batched:
        errors.append("dynamic_batching needs max_batch_size > 0")

    def check(kind, declared, tensors):
        by_name = {t.name: t for t in tensors}
        if [d.name for d in declared] != [t.name for t in tensors]:
            errors.append(f"{kind}s {[d.name for d in declared]} != model's {[t.name for t in tensors]}")
        for d in declared:
            t = by_name.get(d.name)
            if t is None:
                continue
            want_type = triton_dtype(t.elem_type)
            got_type = pb.DataType.Name(d.data_type)
            if got_type != want_type:
                errors.append(f"{kind} '{d.name}': data_type {got_type}, model has {want_type}")
            want = t.triton_dims[1:] if batched else t.triton_dims
            if list(d.dims) != want:
                errors.append(f"{kind} '{d.name}': dims {list(d.dims)}, model has {want}"
                              + (" (without the batch dim)" if batched else ""))

    check("input", cfg.input, io.inputs)
    check("output", cfg.output, io.outputs)
    for lib in cfg.model_operations.op_library_filename:
        if not os.path.isabs(lib):
            errors.append(f"op_library_filename '{lib}' is relative; the backend dlopens it as written")
        local = model_dir / pathlib.Path(lib).name
        if not local.is_file():
            errors.append(f"op library {local.name} is not in {model_dir}")
    if backend == "onnxruntime":
        if not cfg.model_operations.op_library_filename and io.bags:
            errors.append("the model has dlrm_deploy::EmbeddingBag nodes but no model_operations library")
        for v in versions:
            if not (v / "model.onnx").exists():
                errors.append(f"{v.name}/model.onnx missing")
            else:
                for loc in describe_onnx(v / "model.onnx").external_data:
                    if not (v / loc).is_file():
                        errors.append(f"{v.name}/{loc} (external data) missing")
    if backend == "tensorrt" and not (model_dir / "build_plan.sh").exists():
        for v in versions:
            if not (v / "model.plan").exists():
                errors.append(f"{v.name}/model.plan missing and no build_plan.sh")
    if errors:
        raise ValueError(f"{model_dir / 'config.pbtxt'}:\n  " + "\n  ".join(errors))
    return cfg


# --------------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------------

def triton_infer(inputs: dict[str, np.ndarray], model: str, url: str = "localhost:8001",
                 protocol: str = "grpc", outputs: list[str] | None = None, timeout_s: float = 60.0):
    """Sends one request to a running Triton server (tritonclient, HTTP or gRPC) and returns
    ``{output: array}``. ``url`` is host:port (8001 gRPC, 8000 HTTP by default)."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    elif protocol == "http":
        import tritonclient.http as tc
    else:
        raise ValueError(f"protocol '{protocol}' is not grpc or http")
    client = tc.InferenceServerClient(url=url)
    if not client.is_model_ready(model):
        raise RuntimeError(f"model '{model}' is not ready on {url} ({protocol})")
    if outputs is None:
        meta = client.get_model_metadata(model)
        meta_outputs = meta.outputs if protocol == "grpc" else meta["outputs"]
        outputs = [o.name if protocol == "grpc" else o["name"] for o in meta_outputs]
    infer_inputs = make_infer_inputs(inputs, protocol)
    requested = [tc.InferRequestedOutput(n) for n in outputs]
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    result = client.infer(model, infer_inputs, outputs=requested, **kwargs)
    return {n: result.as_numpy(n) for n in outputs}


def make_infer_inputs(inputs: dict[str, np.ndarray], protocol: str = "grpc") -> list:
    """tritonclient ``InferInput`` objects holding `inputs` (datatype from the numpy dtype)."""
    from tritonclient.utils import np_to_triton_dtype

    tc = __import__(f"tritonclient.{protocol}", fromlist=["InferInput"])
    out = []
    for name, a in inputs.items():
        a = np.ascontiguousarray(a)
        x = tc.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        x.set_data_from_numpy(a)
        out.append(x)
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _shape_arg(text: str):
    """NAME=MIN:OPT:MAX with each shape as 1x13 (trtexec style)."""
    try:
        name, spec = text.split("=", 1)
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError
        return name, tuple([int(d) for d in p.split("x")] for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape '{text}': expected NAME=MIN:OPT:MAX, e.g. indices=1:26624:26624") from None


def _kv_arg(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"'{text}': expected KEY=VALUE")
    return tuple(text.split("=", 1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrm-deploy triton-repo``."""
    p.add_argument("onnx", help="exported ONNX file (dlrm-deploy export)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--out", required=True, help="model repository folder (created; the model goes in OUT/NAME)")
    p.add_argument("--name", default="dlrm", help="model name (default: dlrm)")
    p.add_argument("--max-batch-size", type=int, default=1024,
                   help="most samples per request (default 1024); Triton's max_batch_size stays 0 for models "
                        "with EmbeddingBag inputs, see docs/triton.md")
    p.add_argument("--opt-batch-size", type=int, help="samples per request TensorRT tunes for (default: max)")
    p.add_argument("--pooling", type=int, default=1,
                   help="lookups per bag (mean) for the TensorRT profile and perf_data.json (default 1)")
    p.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1; each holds the tables)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind (default gpu)")
    p.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], help="GPU ids, e.g. 0,1 (default: all)")
    p.add_argument("--batching", choices=BATCHING, default="auto",
                   help="auto (default): dynamic batching only when the model allows it")
    p.add_argument("--dynamic-batching", action="store_true",
                   help="require dynamic batching (same as --batching dynamic; an error for ragged inputs)")
    p.add_argument("--preferred-batch-size", type=int, nargs="+", help="dynamic batcher's preferred sizes")
    p.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batcher's queue delay (default 100)")
    p.add_argument("--library", help=f"custom-op ({ORT_LIBRARY}) or plugin ({TRT_LIBRARY}) library "
                                      "(default: the one `make build` wrote)")
    p.add_argument("--plan", help="tensorrt: an engine built on the serving GPU; without it build_plan.sh is written")
    p.add_argument("--serve-root", help="the repository's path as the server sees it, e.g. /models "
                                        "(default: --out, absolute)")
    p.add_argument("--cuda-option", type=_kv_arg, action="append", metavar="KEY=VALUE",
                   help="onnxruntime CUDA execution-provider option (repeatable; replaces the defaults)")
    p.add_argument("--shape", type=_shape_arg, action="append", metavar="NAME=MIN:OPT:MAX",
                   help="tensorrt profile of one input, e.g. indices=1:26624:26624 (repeatable)")
    p.add_argument("--trtexec-arg", action="append", default=[], metavar="ARG",
                   help="extra trtexec flag written into build_plan.sh, e.g. --trtexec-arg=--fp16")
    p.add_argument("--force", action="store_true", help="replace OUT/NAME if it exists")


def main(args: argparse.Namespace) -> int:
    """Runs ``dlrm-deploy triton-repo``; prints the written files."""
    try:
        model_dir = triton_repo(
            args.onnx, args.out, backend=args.backend, name=args.name, max_batch_size=args.max_batch_size,
            opt_batch_size=args.opt_batch_size, pooling=args.pooling, instances=args.instances, kind=args.kind,
            gpus=args.gpus, batching="dynamic" if args.dynamic_batching else args.batching,
            preferred_batch_sizes=args.preferred_batch_size, max_queue_delay_us=args.max_queue_delay_us,
            library=args.library, plan=args.plan, serve_root=args.serve_root,
            cuda_options=dict(args.cuda_option) if args.cuda_option else None,
            shapes=dict(args.shape) if args.shape else None, trtexec_args=args.trtexec_arg,
            overwrite=args.force)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"dlrm-deploy triton-repo: error: {e}", file=sys.stderr)
        return 2
    print(f"{'file':<40} {'bytes':>12}")
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            print(f"{str(p.relative_to(model_dir.parent)):<40} {p.stat().st_size:>12}")
    print(f"\nnext: {model_dir / 'README.md'}")
    return 0
