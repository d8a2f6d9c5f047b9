"""Python-backend Triton repositories (``dlrm-deploy triton-repo --backend python``) and the request
format they take.

The model (``1/model.py``, a copy of ``triton_python_model.py``) runs the ONNX file in ONNX Runtime
with our custom-op library and merges the requests Triton's dynamic batcher hands it. Requests carry
per-sample lengths instead of offsets, so merging is concatenation (see triton_python_model.py and
docs/triton.md): one request = ``[1, b, ...]`` dense rows, and per table ``[1, b]`` lengths and
``[1, N]`` ids. ``max_batch_size`` counts requests merged into one execution.

``io_spec`` derives that format from the ONNX file; ``request_from_feeds`` turns the offsets-form
feeds of ``sample_inputs`` into one such request, so clients, tests and benchmarks build requests the
same way.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from dlrm_deploy.export.lengths import lengths_name

from .model_io import ModelIO, describe_onnx
from .triton_config import _dims_text, _q, numpy_dtype, triton_dtype
from .triton_validate import load_config

MODEL_TEMPLATE = pathlib.Path(__file__).with_name("triton_python_model.py")
IO_FILE = "dlrm_deploy_io.json"


def io_spec(io: ModelIO) -> dict:
    """The request format of a model (written as ``1/dlrm_deploy_io.json``): per-sample inputs,
    per EmbeddingBag input pair the ids / lengths / weights names, tables and dtypes, outputs.
    ValueError for models the python backend cannot merge (an input that is neither per-sample
    nor an ids/offsets/weights input, or outputs without the samples' leading dim)."""
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
    return {"onnx": "model.onnx", "library": None, "dense": [{"name": t.name} for t in dense],
            "bags": bags, "outputs": [t.name for t in io.outputs]}


def request_inputs(io: ModelIO, spec: dict) -> list[tuple[str, str, list[int]]]:
    """``(name, Triton type, dims without Triton's batch dim)`` of every request input, in order."""
    by_name = {t.name: t for t in io.inputs}
    out = [(d["name"], triton_dtype(by_name[d["name"]].elem_type), by_name[d["name"]].triton_dims)
           for d in spec["dense"]]
    for bag in spec["bags"]:
        out.append((bag["indices"], triton_dtype(bag["indices_type"]), [-1]))
        out.append((bag["lengths"], triton_dtype(bag["offsets_type"]), [-1]))
        if bag["weights"]:
            out.append((bag["weights"], triton_dtype(bag["weights_type"]), [-1]))
    return out


def request_from_feeds(feeds: dict[str, np.ndarray], spec: dict) -> dict[str, np.ndarray]:
    """One python-backend request from offsets-form model feeds (e.g. ``sample_inputs``): dense
    inputs and ids with a leading 1, offsets turned into per-sample lengths."""
    req = {d["name"]: feeds[d["name"]][None] for d in spec["dense"]}
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


def responses_to_rows(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A python-backend response ``{output: [1, b, ...]}`` as the model's ``[b, ...]`` outputs."""
    return {k: v[0] for k, v in outputs.items()}


def python_config_text(io: ModelIO, spec: dict, name: str, *, max_batch_size: int, instances: int, kind: str,
                       gpus: list[int] | None, preferred_batch_sizes: list[int] | None, max_queue_delay_us: int,
                       threads: int = 0, merge: bool = True) -> str:
    """config.pbtxt of the python-backend model: ragged request inputs, dynamic batching (merge=False:
    max_batch_size 1 and no batcher, one request per execution: the no-merging baseline)."""
    lines = ["# Written by dlrm-deploy triton-repo --backend python (request format: README.md).",
             f"name: {_q(name)}", 'backend: "python"',
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
    return "\n".join(lines) + "\n"


def write_python_model(onnx_path: pathlib.Path, io: ModelIO, model_dir: pathlib.Path, library: pathlib.Path, *,
                       name: str, version: int = 1, **config) -> dict:
    """Writes the python-backend model into `model_dir` (created by the caller): config.pbtxt,
    ``<version>/model.py``, ``<version>/model.onnx`` (+ external data, output types declared),
    ``<version>/dlrm_deploy_io.json`` and the op library. Returns the request spec."""
    from .triton_repo import _copy_onnx

    spec = io_spec(io)
    version_dir = model_dir / str(version)
    _copy_onnx(onnx_path, io, version_dir)
    _declare_types(version_dir / "model.onnx")
    shutil.copyfile(library, model_dir / library.name)
    spec["library"] = f"../{library.name}"
    (version_dir / IO_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(python_config_text(io, spec, name, **config))
    return spec


def _declare_types(path: pathlib.Path) -> None:
    """Saves the model with the custom op's output types declared (ONNX Runtime needs them; the stub
    has no dlrm_deploy package to patch them at load time). External data stays where it is."""
    import onnx

    from .ort import declare_output_types

    proto = onnx.load(str(path), load_external_data=False)
    if declare_output_types(proto):
        onnx.save(proto, str(path))


def validate_python_repo(model_dir, onnx_path=None):
    """Checks a python-backend model folder: config.pbtxt parses with Triton's schema, its inputs
    and outputs are the request format of the ONNX file, batching is on and ragged, the files
    model.py needs are there. Returns the parsed config; ValueError listing every problem."""
    from tritonclient.grpc import model_config_pb2 as pb

    model_dir = pathlib.Path(model_dir)
    cfg = load_config(model_dir / "config.pbtxt")
    errors = []
    if cfg.backend != "python":
        errors.append(f"backend '{cfg.backend}' is not python")
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
        for f in ("model.py", "model.onnx", IO_FILE):
            if not (v / f).is_file():
                errors.append(f"{v.name}/{f} missing")
    if onnx_path is None and versions:
        onnx_path = versions[0] / "model.onnx"
    io = describe_onnx(onnx_path)
    spec = io_spec(io)
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
