"""What an exported ONNX file takes and gives, and valid inputs for it: one module that `run`,
`trt-build`, `triton-repo`, the Triton client and the benchmarks share.

- ``describe_onnx(path)``: names, element types and dims of the graph's inputs and outputs, and the
  role of each input (dense, or the ids / offsets / per-sample weights of an EmbeddingBag), without
  loading external data.
- ``shape_for`` / ``profile_shapes``: concrete shapes for B samples and a pooling (TensorRT profiles).
- ``sample_inputs(model, batch, pooling, seed)``: THE valid-input generator: ids inside each table,
  non-decreasing offsets, per-table ids and offsets from the exporter's metadata, stacked [T, B]
  rows and TorchRec KeyedJaggedTensor inputs included. ONNX Runtime and TensorRT runs of the same
  arguments get the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from dlrm_deploy import contract as C

OP_DOMAIN = C.DOMAIN
OP_TYPE = C.OP_TYPE

_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
# EmbeddingBag input slot -> role of the graph input feeding it.
_ROLE_SLOTS = {1: "indices", 2: "offsets", 3: "per_sample_weights"}


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
    role: str = "dense"  # dense | indices | offsets | lengths | per_sample_weights | output
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
    path: str | None = None  # the ONNX file it was read from

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

    model = onnx_path if isinstance(onnx_path, onnx.ModelProto) else onnx.load(str(onnx_path), load_external_data=False)
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
            # offsets, or per-sample lengths in their place (export/lengths.py)
            pos = next((table[k] for k in ("offsets", "lengths") if table.get(k) in by_name), None)
            if table.get("indices") in by_name and pos is not None:
                bag = len(bags)
                bags.append({"table_rows": [int(table["rows"])],
                             "include_last_offset": int(table.get("include_last_offset", 0))})
                by_name[table["indices"]].role, by_name[table["indices"]].bag = "indices", bag
                by_name[pos].role = "offsets" if pos == table.get("offsets") else "lengths"
                by_name[pos].bag = bag

    # Widths the file leaves symbolic but fixes through a weight (dense -> Gemm/MatMul/Mlp), for
    # sample requests and TensorRT profiles only; the config keeps the file's dims.
    inits = {t.name: list(t.dims) for t in g.initializer}
    for n in g.node:
        if n.op_type not in ("Gemm", "MatMul", "Mlp") or len(n.input) < 2 or n.input[0] not in by_name:
            continue
        t, w = by_name[n.input[0]], inits.get(n.input[1])
        if t.role != "dense" or not w or len(w) != 2 or len(t.dims) != 2 or isinstance(t.dims[1], int):
            continue
        # dlrm_deploy::Mlp's weights are [N, K], as a Gemm's with transB=1
        trans_b = n.op_type == "Mlp" or (n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute))
        t.resolved = {1: w[1] if trans_b else w[0]}

    external = sorted({e.value for t in g.initializer for e in t.external_data if e.key == "location"})
    return ModelIO(inputs, outputs, bags, external, None if isinstance(onnx_path, onnx.ModelProto) else str(onnx_path))


# --------------------------------------------------------------------------------------------------
# Shapes and sample requests
# --------------------------------------------------------------------------------------------------

def shape_for(t: Tensor, io: ModelIO, batch: int, pooling: int) -> list[int]:
    """Concrete shape of input t for `batch` samples and `pooling` lookups per bag (mean); ValueError
    when the ONNX dims leave it open (give the shapes explicitly)."""
    fixed = [d if isinstance(d, int) else t.resolved.get(i) for i, d in enumerate(t.dims)]
    if t.role == "dense":
        free = [i for i, d in enumerate(fixed) if d is None]
        if free and free != [0]:
            raise ValueError(f"input '{t.name}' {t.dims}: only its first dim may be symbolic (the batch); "
                             "give its shapes explicitly (shapes= / --shape)")
        return [batch if d is None else d for d in fixed]
    bag = io.bags[t.bag]
    tables = len(bag["table_rows"])
    n = {"offsets": tables * batch + bag["include_last_offset"], "lengths": tables * batch}.get(t.role,
                                                                                             tables * batch * pooling)
    if len(fixed) != 1:
        raise ValueError(f"input '{t.name}' ({t.role}) has rank {len(fixed)}, expected 1; give its shapes explicitly")
    if fixed[0] is not None and fixed[0] != n:
        raise ValueError(f"input '{t.name}' ({t.role}) has the fixed size {fixed[0]}, but {batch} samples with "
                         f"{pooling} lookups per bag need {n}")
    return [n]


def profile_shapes(io: ModelIO, max_batch: int, opt_batch: int | None = None, pooling: int = 1,
                   shapes: dict | None = None, *, min_batch: int = 1,
                   max_pooling: int | None = None) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """TensorRT optimization-profile shapes ``{input: (min, opt, max)}`` (trt-build and triton-repo).

    Samples per request from min_batch to max_batch, tuned for opt_batch (default max_batch). Ids
    (lookups): at least 1, T*opt_batch*pooling at opt, T*max_batch*max_pooling at most (max_pooling
    defaults to pooling; T: tables of that input); offsets T*B (+1 with include_last_offset). Static
    inputs take no entry. `shapes` overrides inputs by name with explicit ``(min, opt, max)`` lists.
    ValueError unless 1 <= min_batch <= opt_batch <= max_batch and 1 <= pooling <= max_pooling."""
    opt_batch = opt_batch or max_batch
    max_pooling = max_pooling or pooling
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch ({min_batch}) <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
    if pooling < 1 or max_pooling < pooling:
        raise ValueError(f"need 1 <= pooling ({pooling}) <= max_pooling ({max_pooling})")
    shapes = shapes or {}
    out = {}
    for t in io.inputs:
        if t.name in shapes:
            out[t.name] = tuple(list(s) for s in shapes[t.name])
            continue
        if all(isinstance(d, int) for d in t.dims):
            continue  # static inputs take no profile (trtexec rejects shapes for them)
        lo = shape_for(t, io, min_batch, 1)
        if t.role in ("indices", "per_sample_weights"):
            lo = [1]  # at least one lookup per request keeps every dim non-zero
        out[t.name] = (lo, shape_for(t, io, opt_batch, pooling), shape_for(t, io, max_batch, max_pooling))
    return out


def parse_shape_arg(text: str):
    """argparse type for NAME=MIN:OPT:MAX with each shape as 1x13 (trtexec style) -> (name, (min, opt, max))."""
    import argparse

    try:
        name, spec = text.split("=", 1)
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError
        return name, tuple([int(d) for d in p.split("x")] for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape '{text}': expected NAME=MIN:OPT:MAX, e.g. indices=1:26624:26624") from None


# --------------------------------------------------------------------------------------------------
# Valid inputs
# --------------------------------------------------------------------------------------------------

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
       10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 16: np.uint16}
_BF16 = 16


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
    """Lookups per bag: `total` spread evenly when the model fixes it, else random lengths
    (multinomial) that add up to exactly bags * pooling, so shapes depend on (batch, pooling) only
    and stay inside a TensorRT profile built for that pooling."""
    if bags == 0:
        return np.zeros(0, np.int64)
    if total is not None:  # the model fixes the number of lookups: spread it evenly
        lengths = np.full(bags, total // bags, np.int64)
        lengths[: total % bags] += 1
        return lengths
    return rng.multinomial(bags * pooling, np.full(bags, 1.0 / bags)).astype(np.int64)


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
    """Feature width of a 2-D input from the Gemm/MatMul/Mlp that consumes it with a constant weight."""
    for node in graph.node:
        if not node.input or node.input[0] != name or len(node.input) < 2:
            continue
        w = initializer_shapes.get(node.input[1])
        if w is None or len(w) != 2:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return w[1] if trans_b else w[0]
        if node.op_type == "Mlp":  # dlrm_deploy::Mlp: weights [N, K]
            return w[1]
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
        i_name, o_name, l_name = table.get("indices"), table.get("offsets"), table.get("lengths")
        if i_name in graph_inputs and l_name in graph_inputs and i_name not in feeds:  # lengths form
            lengths = _bag_lengths(batch, pooling, None, rng)
            feeds[i_name] = rng.integers(0, int(table["rows"]), size=int(lengths.sum())).astype(elem_of(i_name))
            feeds[l_name] = lengths.astype(elem_of(l_name))
            continue
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




def _load_proto(model):
    """The ModelProto of a path, serialized bytes, ModelProto or ModelIO (external data not loaded)."""
    import onnx

    if isinstance(model, ModelIO):
        model = model.path
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model), load_external_data=False)


def _graph_input_of(name: str, graph_inputs: dict, producer: dict) -> str:
    """The graph input that reaches `name` through dtype-only ops (Cast, Identity), or name."""
    while name not in graph_inputs and name in producer and producer[name].op_type in ("Cast", "Identity"):
        name = producer[name].input[0]
    return name


def _node_feeds(graph, graph_inputs: dict, feeds: dict, batch: int, pooling: int | None, rng, elem_of) -> dict:
    """Feeds of the inputs EmbeddingBag nodes read (directly or through pass-through ops): ids and
    offsets following the node's attributes, per-sample weights, tables that are graph inputs."""
    producer = {o: n for n in graph.node for o in n.output}
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.domain != OP_DOMAIN or node.op_type != OP_TYPE:
            continue
        attrs = C.validate_attributes(_node_attrs(node))
        rows, D, ilo = attrs["table_rows"], attrs["dim"], attrs["include_last_offset"]
        T = len(rows)
        w_name, i_name, o_name, p_name = [_graph_input_of(n, graph_inputs, producer) if n else n
                                          for n in (list(node.input) + [""] * 4)[:4]]
        if i_name in graph_inputs and o_name in graph_inputs and i_name not in feeds and i_name not in out:
            B = batch
            off_dims = _dims(graph_inputs[o_name])
            if off_dims and off_dims[0] is not None:
                B = max(0, (off_dims[0] - ilo) // T)
            idx_dims = _dims(graph_inputs[i_name])
            n_static = idx_dims[0] if idx_dims and idx_dims[0] is not None else None
            L = pooling or (max(1, n_static // max(1, T * B)) if n_static else 8)
            indices, offsets = _bags(rows, B, ilo, L, n_static, rng)
            out[i_name] = indices.astype(elem_of(i_name))
            out[o_name] = offsets.astype(elem_of(o_name))
            if p_name and p_name in graph_inputs:
                out[p_name] = rng.uniform(0.5, 1.5, size=len(indices)).astype(elem_of(p_name, np.float32))
        if w_name in graph_inputs and w_name not in feeds and w_name not in out:
            total = sum(rows)
            if attrs["dtype"] in C.ROWWISE:  # random row bytes (codes, scale, bias)
                width = C.row_bytes(attrs["dtype"], D, bool(attrs.get("split_scales", 0)))
                out[w_name] = rng.integers(0, 256, size=(total, width), dtype=np.uint8)
            else:
                out[w_name] = _random_tensor([total, D], C.DTYPE_INFO[attrs["dtype"]].onnx, rng)
    return out


def sample_inputs(model, batch: int = 8, pooling: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random feeds ``{input: array}`` for `batch` samples of an exported model (path, bytes,
    onnx.ModelProto or ModelIO); dtypes from the ONNX file.

    Embedding inputs: per-table ids/offsets inputs listed in the exporter's metadata
    (``dlrm_deploy.tables``; also rows of stacked [T, B] offsets and TorchRec KeyedJaggedTensor
    values/lengths/weights inputs), and inputs an EmbeddingBag node reads (directly or through
    Cast/Reshape-like ops), following its attributes. Ids of a table lie in [0, rows); each table
    gets exactly batch * pooling ids (pooling: mean lookups per bag; default 8, or what a static ids
    length implies) in random bag lengths; offsets have `batch` bags per table (+1 with
    include_last_offset), table-major for fused inputs; per-sample weights in [0.5, 1.5); tables
    that are inputs are random in their storage type. Other inputs: N(0, 1) floats, zeros for
    integers; unknown dims: `batch` for the first, the width a consuming Gemm/MatMul weight
    implies for the others, else 1."""
    proto = _load_proto(model)
    graph = proto.graph
    rng = np.random.default_rng(seed)
    init_shapes = {i.name: list(i.dims) for i in graph.initializer}
    graph_inputs = {vi.name: vi for vi in graph.input if vi.name not in init_shapes}

    def elem_of(name, default=np.int64):
        vi = graph_inputs.get(name)
        return _NP.get(vi.type.tensor_type.elem_type, default) if vi is not None else default

    meta = {p.key: p.value for p in proto.metadata_props}
    tables = json.loads(meta.get("dlrm_deploy.tables", "[]"))
    flat = json.loads(meta.get("dlrm_deploy.flat_dense", "{}"))  # 1-D per-sample inputs: name -> width
    feeds: dict[str, np.ndarray] = {}
    feeds.update(_kjt_feeds(tables, graph_inputs, batch, pooling or 8, rng, elem_of))
    feeds.update(_table_feeds(tables, graph_inputs, batch, pooling or 8, rng, elem_of))
    feeds.update(_node_feeds(graph, graph_inputs, feeds, batch, pooling, rng, elem_of))
    for name, vi in graph_inputs.items():
        if name in feeds:
            continue
        dims = [d if d is not None else (batch if k == 0 else (_inner_dim(graph, name, init_shapes) or 1))
                for k, d in enumerate(_dims(vi))] if name not in flat else [batch * int(flat[name])]
        feeds[name] = _random_tensor(dims, vi.type.tensor_type.elem_type, rng)
    return {vi.name: feeds[vi.name] for vi in graph.input if vi.name in feeds}
