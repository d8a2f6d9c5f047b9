"""Python-backend Triton repositories (``dlrm-deploy triton-repo --backend python``) and the request
format they take.

The model (``1/model.py``, a copy of ``triton_python_model.py``) runs the ONNX file in ONNX Runtime
with our custom-op library and merges the requests Triton's dynamic batcher hands it. Requests carry
per-sample lengths instead of offsets, so merging is concatenation (see triton_python_model.py and
docs/triton.md): one request = ``[1, b, ...]`` dense rows and, in the ``packed`` form (the default),
one ``ids`` input with every table's ids (INT32 on the wire unless a table has more rows than INT32
addresses), one ``lengths`` input ``[1, T*b]`` and, where the model has them, one ``weights``
input; in the ``tables`` form, per table ``[1, b]`` lengths and ``[1, N]`` ids. ``max_batch_size``
counts requests merged into one execution.

``io_spec`` derives that format from the ONNX file; ``request_from_feeds`` turns the offsets-form
feeds of ``sample_inputs`` into one such request, so clients, tests and benchmarks build requests the
same way; ``served_spec`` finds which form a served config takes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np

from dlrm_deploy.export.lengths import lengths_name

from .model_io import ModelIO, describe_onnx
from .triton_config import NATIVE_BACKEND, _dims_text, _q, numpy_dtype, triton_dtype
from .triton_validate import load_config

MODEL_TEMPLATE = pathlib.Path(__file__).with_name("triton_python_model.py")
IO_FILE = "dlrm_deploy_io.json"
# Request forms: packed (dense inputs + one ids, one lengths, one weights input for all tables: few
# tensors through the python backend's IPC per request) and tables (one input per model input).
FORMS = ("packed", "tables")
DEFAULT_FORM = "packed"  # faster per request (docs/triton.md, "Request forms")
PACKED_NAMES = ("ids", "lengths", "weights")
INT32_MAX = 2**31 - 1
_ONNX_INT32, _ONNX_INT64 = 6, 7


def _packed_part(spec: dict, outputs: list[str]) -> dict:
    """The packed form's description: input names (``ids``/``lengths``/``weights``, with a ``_``
    added while a per-sample input or output has the name), tables across the EmbeddingBag inputs,
    each input's table range, which tables take weights, the wire and model dtypes."""
    taken = {d["name"] for d in spec["dense"]} | set(outputs)
    names = {}
    for n in PACKED_NAMES:
        name = n
        while name in taken:
            name += "_"
        taken.add(name)
        names[n] = name
    bag_tables, weighted, rows, t = [], [], [], 0
    for bag in spec["bags"]:
        bag_tables.append([t, t + bag["tables"]])
        t += bag["tables"]
        weighted += [bool(bag["weights"])] * bag["tables"]
        rows += bag["table_rows"]
    wtypes = {bag["weights_type"] for bag in spec["bags"] if bag["weights"]}
    if len(wtypes) > 1:
        raise ValueError("the packed request form carries one weights input, but this model's per-sample weights "
                         f"have different types {sorted(wtypes)}: use the tables form (--request-form tables)")
    # INT32 ids address rows 0..2^31-1; a table with more rows needs INT64 on the wire.
    wide = [r for r in rows if r - 1 > INT32_MAX]
    ids_type = _ONNX_INT64 if wide else _ONNX_INT32
    index_dtypes = {bag["indices_dtype"] for bag in spec["bags"]}
    return {"ids": names["ids"], "lengths": names["lengths"], "weights": names["weights"] if any(weighted) else None,
            "tables": t, "table_rows": rows, "bag_tables": bag_tables, "weighted": weighted,
            "ids_type": ids_type, "ids_dtype": numpy_dtype(ids_type), "lengths_type": _ONNX_INT32,
            "lengths_dtype": "int32", "index_dtype": next(iter(index_dtypes)) if len(index_dtypes) == 1 else None,
            "weights_type": next(iter(wtypes)) if wtypes else None,
            "weights_dtype": numpy_dtype(next(iter(wtypes))) if wtypes else None}


def io_spec(io: ModelIO, form: str = "tables") -> dict:
    """The request format of a model in `form` ("packed" or "tables"; the default here is tables,
    what repositories written before the packed form take; triton-repo writes DEFAULT_FORM) as
    ``1/dlrm_deploy_io.json`` holds it: per-sample inputs, per EmbeddingBag input pair the ids / lengths /
    weights names, tables and dtypes, outputs, and for the packed form its inputs (``spec["packed"]``).
    ValueError for models the python backend cannot merge (an input that is neither per-sample
    nor an ids/offsets/weights input, or outputs without the samples' leading dim)."""
    if form not in FORMS:
        raise ValueError(f"request form '{form}' is not one of {FORMS}")
    dense = [t for t in io.inputs if t.role == "dense"]
    batch_syms = {t.dims[0] for t in dense + io.outputs if t.dims}
    if not dense or len(batch_syms) != 1 or not isinstance(next(iter(batch_syms)), str):
        raise ValueError("the python backend needs per-sample inputs and outputs that share one symbolic leading "
                         f"dim (the samples); this model has {[(t.name, t.dims) for t in dense + io.outputs]}")
    taken = {t.name for t in io.inputs}
    bags = []
    for k in sorted({t.bag for t in io.inputs if t.role != "dense"}):
        by_role = {t.role: t for t in io.inputs if t.bag == k}
        off = by_role.get("offsets") or by_role.get("lengths")  # a lengths-form model takes lengths itself
        if "indices" not in by_role or off is None:
            raise ValueError(f"EmbeddingBag #{k}: the python backend needs its ids and offsets (or lengths) as "
                             "model inputs")
        idx = by_role["indices"]
        if len(idx.dims) != 1 or len(off.dims) != 1:
            raise ValueError(f"inputs '{idx.name}' / '{off.name}': the python backend takes 1-D ids and offsets "
                             "(stacked [T, B] offsets are not supported)")
        lname = off.name if off.role == "lengths" else lengths_name(off.name, taken)
        taken.add(lname)
        w = by_role.get("per_sample_weights")
        bags.append({"indices": idx.name, "offsets": off.name if off.role == "offsets" else None, "lengths": lname,
                     "weights": w.name if w else None,
                     "tables": len(io.bags[k]["table_rows"]), "table_rows": list(io.bags[k]["table_rows"]),
                     "include_last_offset": int(io.bags[k].get("include_last_offset", 0)),
                     "indices_dtype": numpy_dtype(idx.elem_type), "offsets_dtype": numpy_dtype(off.elem_type),
                     "indices_type": idx.elem_type, "offsets_type": off.elem_type,
                     "weights_type": w.elem_type if w else None})
    spec = {"onnx": "model.onnx", "library": None, "form": form, "dense": [{"name": t.name} for t in dense],
            "bags": bags, "outputs": [t.name for t in io.outputs]}
    if form == "packed":
        spec["packed"] = _packed_part(spec, spec["outputs"])
    return spec


def request_inputs(io: ModelIO, spec: dict) -> list[tuple[str, str, list[int]]]:
    """``(name, Triton type, dims without Triton's batch dim)`` of every request input, in order."""
    by_name = {t.name: t for t in io.inputs}
    out = [(d["name"], triton_dtype(by_name[d["name"]].elem_type), by_name[d["name"]].triton_dims)
           for d in spec["dense"]]
    if spec.get("form") == "packed":
        p = spec["packed"]
        out += [(p["ids"], triton_dtype(p["ids_type"]), [-1]), (p["lengths"], triton_dtype(p["lengths_type"]), [-1])]
        if p["weights"]:
            out.append((p["weights"], triton_dtype(p["weights_type"]), [-1]))
        return out
    for bag in spec["bags"]:
        out.append((bag["indices"], triton_dtype(bag["indices_type"]), [-1]))
        out.append((bag["lengths"], triton_dtype(bag["offsets_type"]), [-1]))
        if bag["weights"]:
            out.append((bag["weights"], triton_dtype(bag["weights_type"]), [-1]))
    return out


def _wire_ids(ids: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """`ids` as the wire's integer type; ValueError when a value does not fit it (never wrapped)."""
    if ids.dtype == np.dtype(dtype) or not ids.size:
        return ids.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < info.min or hi > info.max:
        raise ValueError(f"ids of '{name}' ({lo}..{hi}) do not fit the served {dtype} ids input")
    return ids.astype(dtype)


def request_from_feeds(feeds: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """One python-backend request in `spec`'s form from offsets-form model feeds (e.g.
    ``sample_inputs``): dense inputs with a leading 1, offsets turned into per-sample lengths; packed:
    every input's ids (table-major already, inputs in order) concatenated into one ``ids`` input of
    the wire type (ValueError for an id that does not fit it), the lengths into one ``lengths``."""
    req = {d["name"]: feeds[d["name"]][None] for d in spec["dense"]}
    if spec.get("form") == "packed":
        p = spec["packed"]
        ids, lengths, weights = [], [], []
        for bag in spec["bags"]:
            ids.append(_wire_ids(np.asarray(feeds[bag["indices"]]).reshape(-1), p["ids_dtype"], bag["indices"]))
            lengths.append(_lengths_of(feeds, bag).astype(p["lengths_dtype"]))
            if bag["weights"]:
                weights.append(np.asarray(feeds[bag["weights"]]).reshape(-1))
        req[p["ids"]] = np.concatenate(ids)[None]
        req[p["lengths"]] = np.concatenate(lengths)[None]
        if p["weights"]:
            req[p["weights"]] = np.concatenate(weights).astype(p["weights_dtype"], copy=False)[None]
        return req
    for bag in spec["bags"]:
        if bag["offsets"] is None:  # the model takes lengths already
            req[bag["indices"]] = feeds[bag["indices"]][None]
            req[bag["lengths"]] = feeds[bag["lengths"]][None]
            if bag["weights"]:
                req[bag["weights"]] = feeds[bag["weights"]][None]
            continue
        ids, offs = feeds[bag["indices"]], feeds[bag["offsets"]].astype(np.int64)
        ends = offs if bag["include_last_offset"] else np.append(offs, len(ids))
        req[bag["indices"]] = ids[None]
        req[bag["lengths"]] = np.diff(ends).astype(feeds[bag["offsets"]].dtype)[None]
        if bag["weights"]:
            req[bag["weights"]] = feeds[bag["weights"]][None]
    return req


def _lengths_of(feeds: dict, bag: dict) -> np.ndarray:
    """Per-sample lengths of one EmbeddingBag input pair from offsets-form (or lengths-form) feeds."""
    if bag["offsets"] is None:
        return np.asarray(feeds[bag["lengths"]]).reshape(-1)
    offs = np.asarray(feeds[bag["offsets"]]).astype(np.int64).reshape(-1)
    ends = offs if bag["include_last_offset"] else np.append(offs, np.asarray(feeds[bag["indices"]]).size)
    return np.diff(ends)


def served_spec(io: ModelIO, config: dict) -> dict:
    """The request spec of a served python-backend model: the form whose inputs (names and Triton
    types) are the served config's (HTTP's JSON form of the config). ValueError when neither is."""
    got = [(i["name"], i["data_type"]) for i in config.get("input", [])]
    for form in FORMS:
        try:
            spec = io_spec(io, form)
        except ValueError:
            continue
        if [(n, t) for n, t, _ in request_inputs(io, spec)] == got:
            return spec
    raise ValueError(f"the served model's inputs {[n for n, _ in got]} are neither request form ({', '.join(FORMS)}) "
                     "of this ONNX file: is it the file the repository was written from?")


def responses_to_rows(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A python-backend response ``{output: [1, b, ...]}`` as the model's ``[b, ...]`` outputs."""
    return {k: v[0] for k, v in outputs.items()}


def python_config_text(io: ModelIO, spec: dict, name: str, *, max_batch_size: int, instances: int, kind: str,
                       gpus: list[int] | None, preferred_batch_sizes: list[int] | None, max_queue_delay_us: int,
                       threads: int = 0, merge: bool = True, native: bool = False,
                       onnxruntime_library: str | None = None) -> str:
    """config.pbtxt of the python-backend model: ragged request inputs, dynamic batching (merge=False:
    max_batch_size 1 and no batcher, one request per execution: the no-merging baseline). native: the
    same model for our C++ backend (``backend: "dlrm_deploy"``), which opens onnxruntime_library."""
    which = "native" if native else "python"
    lines = [f"# Written by dlrm-deploy triton-repo --backend {which} (request format: README.md).",
             f"# Request form: {spec.get('form', 'tables')}.",
             f"name: {_q(name)}", f"backend: {_q(NATIVE_BACKEND if native else 'python')}",
             "# Requests merged into one execution; each request holds any number of samples.",
             f"max_batch_size: {max_batch_size if merge else 1}", "input ["]
    inputs = request_inputs(io, spec)
    for i, (n, dtype, dims) in enumerate(inputs):
        lines += ["  {", f"    name: {_q(n)}", f"    data_type: {dtype}", f"    dims: {_dims_text(dims)}",
                  "    allow_ragged_batch: true", "  }" + ("," if i + 1 < len(inputs) else "")]
    lines += ["]", "output ["]
    for i, t in enumerate(io.outputs):
        lines += ["  {", f"    name: {_q(t.name)}", f"    data_type: {triton_dtype(t.elem_type)}",
                  f"    dims: {_dims_text(t.triton_dims)}", "  }" + ("," if i + 1 < len(io.outputs) else "")]
    lines += ["]", "instance_group [", "  {", f"    count: {instances}",
              f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}"]
    if gpus and kind == "gpu":
        lines.append(f"    gpus: {_dims_text(gpus)}")
    lines += ["  }", "]"]
    if merge:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_dims_text(preferred_batch_sizes)}")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += [f'parameters {{ key: "intra_op_num_threads" value {{ string_value: "{threads}" }} }}']
    if native:
        lines += ["# The ONNX Runtime library the backend opens (absolute, or relative to this folder).",
                  f'parameters {{ key: "onnxruntime_library" value {{ string_value: {_q(onnxruntime_library or "")} }} }}']
    return "\n".join(lines) + "\n"


def write_python_model(onnx_path: pathlib.Path, io: ModelIO, model_dir: pathlib.Path, library: pathlib.Path, *,
                       name: str, version: int = 1, form: str = DEFAULT_FORM, packed_inputs: bool = True,
                       native: bool = False, **config) -> dict:
    """Writes the python-backend model into `model_dir` (created by the caller): config.pbtxt,
    ``<version>/model.py``, ``<version>/model.onnx`` (+ external data, output types declared),
    ``<version>/dlrm_deploy_io.json`` (the request spec in `form`) and the op library. In the packed
    request form with packed_inputs, the served model takes its lookups' inputs packed too
    (export/packed_inputs.py: model.py merges requests into one ids and one offsets input, int32
    where the tables allow, instead of two inputs per table). native: for our C++ backend (no model.py;
    config.pbtxt names the ONNX Runtime library: ``onnxruntime_library`` in `config`, default this
    environment's, see onnxruntime_library_path). Returns the spec."""
    from .triton_repo import _copy_onnx

    version_dir = model_dir / str(version)
    _copy_onnx(onnx_path, io, version_dir)
    io = _prepare_served(version_dir / "model.onnx", io, packed_inputs=packed_inputs and form == "packed")
    spec = io_spec(io, form)
    shutil.copyfile(library, model_dir / library.name)
    spec["library"] = f"../{library.name}"
    (version_dir / IO_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    if native:
        config["onnxruntime_library"] = config.get("onnxruntime_library") or onnxruntime_library_path()
    else:
        shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(python_config_text(io, spec, name, native=native, **config))
    return spec


ORT_LIBRARY_VAR = "DLRM_DEPLOY_ONNXRUNTIME_LIBRARY"


def onnxruntime_library_path() -> str:
    """The ONNX Runtime shared library the native backend opens by default: $DLRM_DEPLOY_ONNXRUNTIME_LIBRARY
    where set (e.g. the Triton container's onnxruntime backend library, or an ONNX Runtime GPU
    release's lib/libonnxruntime.so), else this environment's onnxruntime package's
    (``onnxruntime/capi/libonnxruntime.so.<version>``, found without importing it; onnxruntime-gpu
    wheels do not ship one). FileNotFoundError when there is none."""
    import importlib.util

    if os.environ.get(ORT_LIBRARY_VAR):
        return os.environ[ORT_LIBRARY_VAR]
    spec = importlib.util.find_spec("onnxruntime")
    found = []
    if spec is not None and spec.submodule_search_locations:
        found = sorted((pathlib.Path(next(iter(spec.submodule_search_locations))) / "capi").glob("libonnxruntime.so*"))
    if not found:
        raise FileNotFoundError("no ONNX Runtime shared library in this environment (the native backend opens a "
                                "libonnxruntime.so; the onnxruntime CPU wheel ships one in capi/): pass "
                                f"--onnxruntime-library PATH as the server sees it or set {ORT_LIBRARY_VAR} (for "
                                "KIND_GPU: one with the CUDA provider beside it, docs/triton.md)")
    return str(found[-1].resolve())


def _prepare_served(path: pathlib.Path, io: ModelIO, *, packed_inputs: bool) -> ModelIO:
    """Saves the copied model with the custom op's output types declared (ONNX Runtime needs them;
    the stub has no dlrm_deploy package to patch them at load time) and, with packed_inputs, its
    lookups' inputs packed. External data stays where it is. Returns the served file's description."""
    import onnx

    from dlrm_deploy.export.packed_inputs import to_packed_inputs

    from .ort import declare_output_types

    proto = onnx.load(str(path), load_external_data=False)
    packed = 0
    if packed_inputs:
        proto, packed = to_packed_inputs(proto)
    if declare_output_types(proto) or packed:
        onnx.save(proto, str(path))
    return describe_onnx(proto) if packed else io


def validate_python_repo(model_dir, onnx_path=None):
    """Checks a python-backend model folder: config.pbtxt parses with Triton's schema, its inputs
    and outputs are the request format of the ONNX file, batching is on and ragged, the files
    model.py needs are there. Returns the parsed config; ValueError listing every problem."""
    from tritonclient.grpc import model_config_pb2 as pb

    model_dir = pathlib.Path(model_dir)
    cfg = load_config(model_dir / "config.pbtxt")
    errors = []
    if cfg.backend not in ("python", NATIVE_BACKEND):
        errors.append(f"backend '{cfg.backend}' is not python or {NATIVE_BACKEND}")
    if cfg.name != model_dir.name:
        errors.append(f"config name '{cfg.name}' differs from the folder name '{model_dir.name}'")
    if cfg.max_batch_size < 1:
        errors.append("the request format has Triton's batch dim: max_batch_size must be > 0")
    if cfg.max_batch_size > 1 and not cfg.HasField("dynamic_batching"):
        errors.append("max_batch_size > 1 without dynamic_batching: requests would never be merged")
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        errors.append("no numeric version folder")
    for v in versions:
        for f in ("model.py", "model.onnx", IO_FILE) if cfg.backend == "python" else ("model.onnx", IO_FILE):
            if not (v / f).is_file():
                errors.append(f"{v.name}/{f} missing")
    if onnx_path is None and versions:
        onnx_path = versions[0] / "model.onnx"
    io = describe_onnx(onnx_path)
    form = "tables"  # what repositories written before the packed form take
    if versions and (versions[0] / IO_FILE).is_file():
        form = json.loads((versions[0] / IO_FILE).read_text()).get("form", "tables")
    if cfg.backend == NATIVE_BACKEND and form != "packed":
        errors.append(f"the {NATIVE_BACKEND} backend takes the packed request form, not '{form}'")
    try:
        spec = io_spec(io, form)
    except ValueError as e:
        raise ValueError(f"{model_dir}: {e}") from None
    want = [(n, t, d) for n, t, d in request_inputs(io, spec)]
    got = [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input]
    if got != want:
        errors.append(f"inputs {got} != the request format {want}")
    not_ragged = [i.name for i in cfg.input if not i.allow_ragged_batch]
    if not_ragged:
        errors.append(f"inputs {not_ragged} need allow_ragged_batch: true (requests differ in size)")
    want_out = [(t.name, triton_dtype(t.elem_type), t.triton_dims) for t in io.outputs]
    got_out = [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output]
    if got_out != want_out:
        errors.append(f"outputs {got_out} != the model's {want_out}")
    if errors:
        raise ValueError(f"{model_dir / 'config.pbtxt'}:\n  " + "\n  ".join(errors))
    return cfg
