"""`dlrm-deploy run`: runs an exported model on random valid inputs and times it.

    dlrm-deploy run model.onnx [--runtime ort] [--device cpu|cuda] [--batch N] [--runs N]
    dlrm-deploy run model.plan --runtime trt ...

Inputs are read from the ONNX file: embedding indices stay inside their tables (the exporter's
``dlrm_deploy.tables`` metadata for per-table inputs, else the EmbeddingBag node's table_rows),
offsets are non-decreasing with `--pooling` lookups per bag on average, other inputs are random
with the batch dimension set to `--batch`. `random_inputs` is reusable by other runtimes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

OP_DOMAIN = "dlrm_deploy"
OP_TYPE = "EmbeddingBag"

# ONNX TensorProto element type -> numpy dtype (bfloat16: uint16 bits)
_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
       10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 16: np.uint16}
_BF16 = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `dlrm-deploy run`."""
    parser.add_argument("model", help="exported .onnx file (--runtime ort) or TensorRT engine (--runtime trt)")
    parser.add_argument("--runtime", choices=["ort", "trt"], default=None,
                        help="ort: ONNX Runtime with the custom-op library; trt: a TensorRT engine "
                             "(default: trt for .plan/.engine files, else ort)")
    parser.add_argument("--onnx", default=None,
                        help="with --runtime trt: the ONNX file the engine was built from, whose inputs are "
                             "generated (default: the engine's name with .onnx)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when onnxruntime has the CUDA execution provider, else cpu")
    parser.add_argument("--batch", type=int, default=128, help="samples per inference (default 128)")
    parser.add_argument("--pooling", type=int, default=None,
                        help="mean lookups per bag (default: from a static indices shape, else 8)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="ORT on CUDA: capture the run into a CUDA graph and time its replays")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


# ------------------------------------------------------------------------------------------------
# Random valid inputs


def _dims(value_info) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _node_attrs(node) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if not isinstance(v, (int, float)) else v)
    return out


def _bag_lengths(bags: int, pooling: int, total: int | None, rng) -> np.ndarray:
    if bags == 0:
        return np.zeros(0, np.int64)
    if total is not None:  # the model fixes the number of lookups: spread it evenly
        lengths = np.full(bags, total // bags, np.int64)
        lengths[: total % bags] += 1
        return lengths
    lo, hi = max(1, pooling // 2), pooling + pooling // 2 + 1
    return rng.integers(lo, max(hi, lo + 1), size=bags).astype(np.int64)


def _random_tensor(dims: list[int], elem: int, rng) -> np.ndarray:
    dtype = _NP.get(elem)
    if dtype is None:
        raise ValueError(f"cannot make random inputs of ONNX element type {elem}")
    if elem == _BF16:  # bf16 bits of small normal values
        f = (rng.standard_normal(dims) * 0.1).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(dims).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    return np.zeros(dims, dtype)  # integer inputs we know nothing about: 0 is always a valid id


def _bags(rows: list[int], batch: int, ilo: int, pooling: int, total: int | None, rng):
    """(indices, offsets) of T = len(rows) tables x batch bags, table-major, ids in range."""
    T = len(rows)
    lengths = _bag_lengths(T * batch, pooling, total, rng)
    ids = [rng.integers(0, rows[t], size=int(lengths[t * batch:(t + 1) * batch].sum())) for t in range(T)]
    indices = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return indices, (offsets if ilo else offsets[:-1])


def _inner_dim(graph, name: str, initializer_shapes: dict) -> int | None:
    """Feature width of a 2-D input from the Gemm/MatMul that consumes it with a constant weight."""
    for node in graph.node:
        if not node.input or node.input[0] != name or len(node.input) < 2:
            continue
        w = initializer_shapes.get(node.input[1])
        if w is None or len(w) != 2:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return w[1] if trans_b else w[0]
        if node.op_type == "MatMul":
            return w[0]
    return None


def _kjt_feeds(tables: list[dict], graph_inputs: dict, batch: int, pooling: int, rng, elem_of) -> dict:
    """Feeds of the KeyedJaggedTensor inputs the exporter's metadata describes (``kjt`` entries):
    per key `batch` bags of about `pooling` ids in [0, rows of the key's table) (ids 0 for a key no
    table reads), key-major lengths, per-sample weights in [0.5, 1.5) where the KJT has weights."""
    feeds: dict[str, np.ndarray] = {}
    for kjt in {t["kjt"]["values"]: t["kjt"] for t in tables if isinstance(t.get("kjt"), dict)}.values():
        values, lengths_name, weights = kjt.get("values"), kjt.get("lengths"), kjt.get("weights")
        if values not in graph_inputs or lengths_name not in graph_inputs or values in feeds:
            continue
        keys = list(kjt.get("keys", []))
        rows = [int(r) if r else 1 for r in kjt.get("rows", [None] * len(keys))]
        lengths = _bag_lengths(len(keys) * batch, pooling, None, rng)
        ids = [rng.integers(0, rows[k], size=int(lengths[k * batch:(k + 1) * batch].sum())) for k in range(len(keys))]
        feeds[values] = (np.concatenate(ids) if ids else np.zeros(0, np.int64)).astype(elem_of(values))
        feeds[lengths_name] = lengths.astype(elem_of(lengths_name))
        if weights in graph_inputs:
            feeds[weights] = rng.uniform(0.5, 1.5, size=len(feeds[values])).astype(elem_of(weights, np.float32))
    return feeds


def _table_feeds(tables: list[dict], graph_inputs: dict, batch: int, pooling: int, rng, elem_of) -> dict:
    """Feeds of the per-table ids and offsets inputs the exporter's metadata lists. A table whose
    ids or offsets are row k of a stacked input (``indices_row`` / ``offsets_row``, e.g. DLRM_Net's
    [T, B] offsets) fills that row; stacked ids get exactly `pooling` ids per bag (equal rows)."""
    feeds: dict[str, np.ndarray] = {}
    stacked: dict[str, dict[int, np.ndarray]] = {}
    for table in tables:
        i_name, o_name = table.get("indices"), table.get("offsets")
        if i_name not in graph_inputs or o_name not in graph_inputs or i_name in feeds:
            continue
        i_row, o_row = table.get("indices_row"), table.get("offsets_row")
        total = batch * pooling if i_row is not None else None
        indices, offsets = _bags([int(table["rows"])], batch, int(table.get("include_last_offset", 0)),
                                 pooling, total, rng)
        for name, row, arr in ((i_name, i_row, indices), (o_name, o_row, offsets)):
            if row is None:
                feeds[name] = arr.astype(elem_of(name))
            else:
                stacked.setdefault(name, {})[int(row)] = arr
    for name, rows in stacked.items():
        width = len(next(iter(rows.values())))
        full = [rows.get(k, np.zeros(width, np.int64)) for k in range(max(rows) + 1)]
        feeds[name] = np.stack(full).astype(elem_of(name))
    return feeds


def random_inputs(model, batch: int = 128, pooling: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random valid feeds for an exported model (path, bytes or onnx.ModelProto).

    Embedding inputs: per-table indices/offsets inputs listed in the exporter's metadata
    (``dlrm_deploy.tables``; also rows of stacked [T, B] offsets and TorchRec KeyedJaggedTensor
    values/lengths/weights inputs), and inputs an EmbeddingBag node reads directly (following its
    attributes). Indices of a table lie in [0, rows), `pooling` lookups per bag on average
    (uniform in [pooling/2, 3*pooling/2]; default 8, or what a static indices length implies),
    offsets have `batch` bags per table (+1 with include_last_offset); per-sample weights in
    [0.5, 1.5); tables that are inputs rather than initializers are random in their storage type.
    Other inputs: random floats, zeros for integers; unknown dimensions: `batch` for the first,
    the width a consuming Gemm/MatMul weight implies for the others, else 1."""
    import json

    import onnx

    from dlrm_deploy import contract

    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    else:
        proto = onnx.load(str(model), load_external_data=False)
    graph = proto.graph
    rng = np.random.default_rng(seed)
    init_shapes = {i.name: list(i.dims) for i in graph.initializer}
    graph_inputs = {vi.name: vi for vi in graph.input if vi.name not in init_shapes}
    feeds: dict[str, np.ndarray] = {}

    def elem_of(name, default=np.int64):
        vi = graph_inputs.get(name)
        return _NP.get(vi.type.tensor_type.elem_type, default) if vi is not None else default

    # 1. inputs the exporter lists: per-table ids/offsets (or rows of stacked ones), KJT inputs
    meta = {p.key: p.value for p in proto.metadata_props}
    tables = json.loads(meta.get("dlrm_deploy.tables", "[]"))
    feeds.update(_kjt_feeds(tables, graph_inputs, batch, pooling or 8, rng, elem_of))
    feeds.update(_table_feeds(tables, graph_inputs, batch, pooling or 8, rng, elem_of))

    # 2. inputs an EmbeddingBag node reads directly
    for node in graph.node:
        if node.domain != OP_DOMAIN or node.op_type != OP_TYPE:
            continue
        attrs = contract.validate_attributes(_node_attrs(node))
        rows, D, ilo = attrs["table_rows"], attrs["dim"], attrs["include_last_offset"]
        T = len(rows)
        w_name, i_name, o_name, p_name = (list(node.input) + [""] * 4)[:4]
        if i_name in graph_inputs and o_name in graph_inputs and i_name not in feeds:
            B = batch
            off_dims = _dims(graph_inputs[o_name])
            if off_dims and off_dims[0] is not None:
                B = max(0, (off_dims[0] - ilo) // T)
            idx_dims = _dims(graph_inputs[i_name])
            n_static = idx_dims[0] if idx_dims and idx_dims[0] is not None else None
            L = pooling or (max(1, n_static // max(1, T * B)) if n_static else 8)
            indices, offsets = _bags(rows, B, ilo, L, n_static, rng)
            feeds[i_name] = indices.astype(elem_of(i_name))
            feeds[o_name] = offsets.astype(elem_of(o_name))
            if p_name and p_name in graph_inputs:
                feeds[p_name] = rng.uniform(0.5, 1.5, size=len(indices)).astype(np.float32)
        if w_name in graph_inputs and w_name not in feeds:
            total = sum(rows)
            if attrs["dtype"] == "int8":
                feeds[w_name] = rng.integers(0, 256, size=(total, contract.int8_row_bytes(D)), dtype=np.uint8)
            else:
                elem = {"fp32": 1, "fp16": 10, "bf16": _BF16}[attrs["dtype"]]
                feeds[w_name] = _random_tensor([total, D], elem, rng)

    # 3. everything else
    for name, vi in graph_inputs.items():
        if name in feeds:
            continue
        dims = []
        for k, d in enumerate(_dims(vi)):
            if d is None:
                d = batch if k == 0 else (_inner_dim(graph, name, init_shapes) or 1)
            dims.append(d)
        feeds[name] = _random_tensor(dims, vi.type.tensor_type.elem_type, rng)
    return feeds


# ------------------------------------------------------------------------------------------------
# The command


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _describe(arr) -> tuple[str, str]:
    return str(list(arr.shape)), str(arr.dtype)


def run_ort(args: argparse.Namespace) -> int:
    """`run --runtime ort`: one checked inference, then timing; prints tables."""
    from . import ort as dd_ort

    device = args.device or ("cuda" if dd_ort.cuda_available() else "cpu")
    kw = {"intra_op_num_threads": args.threads} if args.threads else {}
    if getattr(args, "cuda_graph", False):
        if device != "cuda":
            raise ValueError("--cuda-graph needs --device cuda")
        kw["cuda_graph"] = True
    sess = dd_ort.ort_session(args.model, device=device, **kw)
    feeds = random_inputs(args.model, batch=args.batch, pooling=args.pooling, seed=args.seed)
    outputs = sess.run(feeds)
    print(f"model {args.model}: ONNX Runtime, device {device}, providers {sess.providers}")
    rows = [["tensor", "shape", "dtype"]]
    rows += [[f"in  {n}", *_describe(feeds[n])] for n in sess.input_names]
    rows += [[f"out {n}", *_describe(o)] for n, o in zip(sess.output_names, outputs)]
    print(_table(rows))
    t = sess.time_runs(feeds, runs=args.runs, warmup=args.warmup)
    per_s = args.batch / (t["median_ms"] / 1e3) if t["median_ms"] > 0 else float("inf")
    print()
    print(_table([["batch", "runs", "median ms", "min ms", "max ms", "samples/s"],
                  [str(args.batch), str(t["runs"]), f"{t['median_ms']:.3f}", f"{t['min_ms']:.3f}",
                   f"{t['max_ms']:.3f}", f"{per_s:,.0f}"]]))
    return 0


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the options (a message), or None. Sets args.runtime when not given."""
    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        return "--batch and --runs must be >= 1, --warmup >= 0"
    if args.pooling is not None and args.pooling < 1:
        return "--pooling must be >= 1"
    if args.runtime is None:
        args.runtime = "trt" if args.model.endswith((".plan", ".engine")) else "ort"
    if args.runtime == "ort" and args.model.endswith((".plan", ".engine")):
        return f"{args.model} is a TensorRT engine: run it with --runtime trt (and --onnx <the exported .onnx>)"
    if args.onnx is not None and args.runtime != "trt":
        return "--onnx is for --runtime trt (the ONNX file a TensorRT engine was built from)"
    return None


def _check_files(args: argparse.Namespace) -> str | None:
    """The first missing input file (a message), or None."""
    if os.path.isdir(args.model):
        return f"{args.model} is a folder; give the exported .onnx file (or a TensorRT .plan)"
    if not os.path.isfile(args.model):
        return f"model file not found: {args.model}"
    if args.onnx is not None and not os.path.isfile(args.onnx):
        return f"--onnx file not found: {args.onnx}"
    return None


def main(args: argparse.Namespace) -> int:
    """Entry point of `dlrm-deploy run`; returns the exit code: 0, or 2 for a user error (a missing or
    unreadable file, a bad option, TensorRT missing, a model or inputs the runtime refuses),
    reported as one line on stderr."""
    from dlrm_deploy.cli import error_line, is_user_error

    try:
        problem = _check_args(args)
        if problem is None and args.runtime == "trt":
            try:
                from .trt import run_plan
            except ImportError as e:
                raise ImportError(f"--runtime trt needs TensorRT support (dlrm_deploy.runtime.trt): {e}") from e
        problem = problem or _check_files(args)
        if problem:
            raise ValueError(problem)
        if args.runtime == "trt":
            return int(run_plan(args.model, args) or 0)
        return run_ort(args)
    except Exception as e:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        # RuntimeError here: a runtime refusing the device, engine or inputs (e.g. no CUDA provider)
        if not (is_user_error(e) or isinstance(e, RuntimeError)) or os.environ.get("DLRM_DEPLOY_TRACEBACK"):
            raise
        print(f"dlrm-deploy run: error: {error_line(e)}", file=sys.stderr)
        return 2
