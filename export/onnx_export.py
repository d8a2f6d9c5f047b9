"""ONNX export of any torch module that uses ``nn.EmbeddingBag``, with our custom op.

``export_onnx`` leaves the user's model untouched: it deep-copies it with every ``nn.EmbeddingBag``
replaced by a ``DeployEmbeddingBag`` that calls ``torch.ops.dlrm_deploy.embedding_bag`` (tables
converted to the storage dtype, optionally frequency-reordered with an index remap), exports the
copy with torch's dynamo exporter (the op becomes one ``dlrm_deploy::EmbeddingBag`` node per table
through a custom translation), then, with table batching on, fuses those nodes into one node per
group of compatible tables over a packed table blob.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, external_data_helper, helper, numpy_helper
from torch import nn

from dlrm_deploy import contract as C

from .model_inputs import default_dynamic_shapes, dumps, input_source, pin_specialised_dims, warn_fixed_dims
from .onnx_schema import register_onnx_schema
from .overlap import apply_overlap
from .tables import (DEFAULT_HOT_COVERAGE, DEFAULT_L2_BUDGET_BYTES, choose_pinned_rows, convert_table,
                     hot_coverage, pack_tables, plan_hot_rows, profile_hot_rows, storage_row_bytes)
from .torchrec_support import (STORED_ROWS, canonical_inputs, check_quantized, dequantize_collections,
                               features_of_tables, kjt_inputs)

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights go to a .data file
_OUT_DTYPE_OF = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_ATTR_NAMES = [f.name for f in C.FIELDS]


def _torch_op():
    """The registered torch op (importing the runtime module registers it)."""
    import dlrm_deploy.runtime.torch_op  # noqa: F401

    return torch.ops.dlrm_deploy.embedding_bag


class DeployEmbeddingBag(nn.Module):
    """An ``nn.EmbeddingBag`` replacement calling ``torch.ops.dlrm_deploy.embedding_bag``.

    Holds the table in the op's storage form (``weight``: [rows, dim] fp32/fp16/bf16, or uint8
    [rows, row_bytes] for int8) and, when rows were reordered by frequency, ``remap`` (int64 [rows]:
    old row id -> stored row) applied to the ids before the lookup. forward accepts what
    ``nn.EmbeddingBag.forward`` accepts: 1-D ids with offsets, or 2-D [B, L] ids without offsets.
    """

    def __init__(self, weight: torch.Tensor, *, rows: int, dim: int, dtype: str = "fp32", out_dtype: str = "fp32",
                 mode: str = "sum", include_last_offset: bool = False, variant: str = "auto",
                 prefetch_distance: int = 0, pinned_rows: int = 0, check: str = "checked",
                 remap: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("remap", remap)
        self.attrs = C.validate_attributes(dict(
            table_rows=[int(rows)], dim=int(dim), dtype=dtype, out_dtype=out_dtype, mode=mode,
            include_last_offset=int(bool(include_last_offset)), variant=variant,
            prefetch_distance=int(prefetch_distance), pinned_rows=int(pinned_rows),
            hot_first=int(pinned_rows > 0), check=check))

    def extra_repr(self) -> str:
        a = self.attrs
        return (f"rows={a['table_rows'][0]}, dim={a['dim']}, dtype={a['dtype']}, mode={a['mode']}, "
                f"variant={a['variant']}, pinned_rows={a['pinned_rows']}, remap={self.remap is not None}")

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        attrs = dict(self.attrs)
        if input.dim() == 2:
            if offsets is not None:
                raise ValueError("offsets must be None when input is 2-D")
            b, length = input.shape
            offsets = torch.arange(0, b * length, length, dtype=input.dtype, device=input.device)
            input = input.reshape(-1)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
            attrs["include_last_offset"] = 0
        elif input.dim() != 1 or offsets is None:
            raise ValueError("input must be 1-D with offsets, or 2-D without")
        if offsets.dtype != input.dtype:
            offsets = offsets.to(input.dtype)
        if self.remap is not None:
            # Out-of-range ids pass through unchanged so that the op rejects them with the user's
            # own value (a plain remap Gather would wrap negative ids around, silently).
            rows = self.remap.shape[0]
            valid = (input >= 0) & (input < rows)
            mapped = torch.index_select(self.remap, 0, input.clamp(0, rows - 1)).to(input.dtype)
            input = torch.where(valid, mapped, input)
            if input.dtype != offsets.dtype:
                input = input.to(offsets.dtype)
        if per_sample_weights is not None and per_sample_weights.dtype != torch.float32:
            per_sample_weights = per_sample_weights.to(torch.float32)
        return _torch_op()(self.weight, input, offsets, per_sample_weights, *[attrs[n] for n in _ATTR_NAMES])


def _translate(weight, indices, offsets, per_sample_weights=None, table_rows=(), dim=0, dtype="fp32",
               out_dtype="fp32", mode="sum", include_last_offset=0, variant="auto", prefetch_distance=0,
               pinned_rows=0, hot_first=0, check="checked", overlap=0):
    """ONNX translation of the torch op: one dlrm_deploy::EmbeddingBag node."""
    import onnxscript

    op = onnxscript.values.Opset(C.DOMAIN, C.OP_VERSION)
    inputs = [weight, indices, offsets] + ([per_sample_weights] if per_sample_weights is not None else [])
    return op.EmbeddingBag(*inputs, table_rows=[int(r) for r in table_rows], dim=int(dim), dtype=dtype,
                           out_dtype=out_dtype, mode=mode, include_last_offset=int(include_last_offset),
                           variant=variant, prefetch_distance=int(prefetch_distance),
                           pinned_rows=int(pinned_rows), hot_first=int(hot_first), check=check, overlap=int(overlap))


@dataclass
class TableInfo:
    """One exported table: its module, rows, storage and hot-row statistics."""

    module: str
    rows: int
    dim: int
    dtype: str
    mode: str
    pinned_rows: int = 0
    reordered: bool = False
    sampled_lookups: int = 0
    hot_coverage: float = 0.0  # share of sampled lookups served by the pinned rows


@dataclass
class ExportInfo:
    """What ``export_onnx`` wrote: path, external data file, tables, op nodes and timings (s)."""

    path: str
    external_data: str | None
    tables: list[TableInfo]
    op_nodes: int
    groups: list[list[str]] = field(default_factory=list)  # module names per op node
    weight_bytes: int = 0
    pinned_rows: int = 0
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"wrote {self.path}" + (f" (+ {self.external_data})" if self.external_data else ""),
                 f"  {len(self.tables)} tables -> {self.op_nodes} {C.DOMAIN}::{C.OP_TYPE} node(s); "
                 f"table bytes {self.weight_bytes / 2**20:.1f} MiB"]
        if self.pinned_rows:
            cov = [t.hot_coverage for t in self.tables if t.reordered]
            lines.append(f"  pinned rows per table {self.pinned_rows} (sampled coverage "
                         f"{100 * min(cov):.1f}..{100 * max(cov):.1f}%)" if cov else
                         f"  pinned rows per table {self.pinned_rows}")
        lines.append("  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def _embedding_bags(model: nn.Module) -> list[tuple[str, nn.EmbeddingBag]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.EmbeddingBag)]


def _check_supported(name: str, m: nn.EmbeddingBag) -> None:
    if m.mode not in C.MODES:
        raise NotImplementedError(f"{name}: mode='{m.mode}' is not supported (only {C.MODES})")
    if m.max_norm is not None:
        raise NotImplementedError(f"{name}: max_norm is not supported at inference export")
    if m.padding_idx is not None:
        raise NotImplementedError(f"{name}: padding_idx is not supported; drop padding ids from the bags or "
                                  "give them per_sample_weights of 0")


def swap_embedding_bags(model: nn.Module, *, dtype: str = "fp32", variant: str = "auto", prefetch_distance: int = 0,
                        check: str = "checked", pinned_rows: int | dict = 0,
                        hot_plans: dict | None = None) -> nn.Module:
    """A deep copy of model with every nn.EmbeddingBag replaced by a ``DeployEmbeddingBag``.

    dtype: table storage (fp32/fp16/bf16/int8); pinned_rows: hot rows per table (an int for all, or
    {module name: int}); hot_plans: {module name: HotRowPlan} to reorder rows by frequency. The
    output dtype stays the original table's dtype (fp32 for most models). Parameters other than the
    tables are copied; the original model is not modified.
    """
    hot_plans = hot_plans or {}
    memo = {}
    for name, m in _embedding_bags(model):
        _check_supported(name, m)
        # Rows already in the storage form (a converted TorchRec quantized table) are kept as they are.
        stored = getattr(m, STORED_ROWS, {}).get(dtype)
        w = m.weight.detach() if stored is None else stored
        plan = hot_plans.get(name)
        remap = None
        if plan is not None:
            w = w[torch.from_numpy(plan.order)]
            remap = torch.from_numpy(plan.remap)
        p = pinned_rows.get(name, 0) if isinstance(pinned_rows, dict) else int(pinned_rows)
        if p > m.num_embeddings:
            raise ValueError(f"{name}: pinned_rows={p} exceeds its {m.num_embeddings} rows")
        table = convert_table(w, dtype) if stored is None else w.contiguous()
        memo[id(m)] = DeployEmbeddingBag(
            table, rows=m.num_embeddings, dim=m.embedding_dim, dtype=dtype,
            out_dtype=_OUT_DTYPE_OF.get(m.weight.dtype, "fp32"), mode=m.mode,
            include_last_offset=m.include_last_offset, variant=variant, prefetch_distance=prefetch_distance,
            pinned_rows=p, check=check, remap=remap)
    # deepcopy with the replacements pre-seeded in the memo puts them wherever the originals were
    # referenced (ModuleList, attributes, shared modules) without copying the original tables.
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------------------------------------
# ONNX graph pass: table batching


def _value_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    types = {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        types[v.name] = v.type
    for t in graph.initializer:
        tp = onnx.TypeProto()
        tp.tensor_type.elem_type = t.data_type
        for d in t.dims:
            tp.tensor_type.shape.dim.add().dim_value = d
        types[t.name] = tp
    return types


def _attrs_of(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if a.type == onnx.AttributeProto.INTS else v)
    return C.validate_attributes(out)


def _topo_sort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in an order where every producer precedes its consumers (otherwise as given)."""
    producer = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producer[o] = i
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    order = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(nodes[i])
                continue
            if state[i]:
                continue
            state[i] = 1
            stack.append((i, True))
            for inp in reversed(nodes[i].input):
                j = producer.get(inp)
                if j is not None and state[j] == 0:
                    stack.append((j, False))
    return order


def _ancestors(nodes: list[onnx.NodeProto], targets: list[int]) -> dict[int, set[int]]:
    """For each target node index, the target node indices it depends on (transitively)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    memo: dict[int, frozenset] = {}
    tset = set(targets)

    def anc(i: int) -> frozenset:
        if i in memo:
            return memo[i]
        result = set()
        stack = [producer[x] for x in nodes[i].input if x in producer]
        seen = set()
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            if j in tset:
                result.add(j)
            stack.extend(producer[x] for x in nodes[j].input if x in producer)
        memo[i] = frozenset(result)
        return memo[i]

    return {t: set(anc(t)) for t in targets}


class ExternalDataWriter:
    """Writes big initializers straight into the external data file (protobuf cannot hold or copy
    a message over 2 GB, e.g. the paper config's packed fp32 tables) and returns tensors that refer
    to it; ``onnx.save_model(save_as_external_data=True)`` appends the remaining ones after them."""

    ALIGN = 4096  # bytes; page-aligned tensors can be memory-mapped

    def __init__(self, data_path: str, location: str):
        self.data_path = data_path
        self.location = location
        if os.path.exists(data_path):
            os.remove(data_path)  # onnx appends to an existing file

    def add_parts(self, name: str, data_type: int, shape: list[int], parts) -> TensorProto:
        """Appends the bytes of each array in parts (any iterable: a generator keeps one part in
        memory at a time) as one tensor of shape; returns the TensorProto referring to them."""
        length = 0
        with open(self.data_path, "ab") as f:
            offset = f.tell()
            pad = -offset % self.ALIGN
            f.write(b"\0" * pad)
            offset += pad
            for part in parts:
                mv = memoryview(np.ascontiguousarray(part)).cast("B")
                for start in range(0, len(mv), 1 << 28):
                    f.write(mv[start:start + (1 << 28)])
                length += len(mv)
        t = TensorProto(name=name, data_type=data_type, dims=[int(d) for d in shape])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=k, value=v)
        return t


def _table_bytes(t: TensorProto) -> np.ndarray:
    """An initializer's rows as bytes, uint8 [rows, row bytes]."""
    a = numpy_helper.to_array(t)
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


def _packed_rows(tables: list[TensorProto], pinned: int):
    """The packed blob's rows (pack_tables' layout) as a sequence of per-table pieces, decoding one
    table at a time: plain, each table in order; hot_first, every table's first pinned rows, then
    every table's remaining rows."""
    if pinned <= 0:
        for t in tables:
            yield _table_bytes(t)
        return
    if any(int(t.dims[0]) < pinned for t in tables):
        raise ValueError("hot_first: every table needs at least pinned_rows rows")
    for t in tables:
        yield _table_bytes(t)[:pinned]
    for t in tables:
        yield _table_bytes(t)[pinned:]


def batch_tables(model: onnx.ModelProto, writer: ExternalDataWriter | None = None) -> list[list[int]]:
    """Fuses the model's single-table dlrm_deploy::EmbeddingBag nodes into one node per group.

    A group shares dim, mode, storage and output dtype, kernel options, pinned_rows, index type,
    include_last_offset and the presence of per-sample weights, and no member depends on another's
    output. Each fused node reads the packed tables (one initializer; ``hot_first`` when
    pinned_rows > 0) and every member's own ids, offsets and weights (the op's per-table form:
    nothing is concatenated or shifted in the graph, so each table keeps PyTorch's semantics and its
    errors name its own inputs); a Split restores the original outputs. Returns the original node
    positions of each fused group (in the old order).
    """
    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    types = _value_types(graph)
    ops = [i for i, n in enumerate(nodes) if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]
    if len(ops) < 2:
        return [[i] for i in ops]
    deps = _ancestors(nodes, ops)

    def key(i):
        n = nodes[i]
        a = _attrs_of(n)
        if len(a["table_rows"]) != 1 or n.input[0] not in inits:
            return None
        idx_t = types.get(n.input[1])
        if idx_t is None or idx_t.tensor_type.elem_type not in (TensorProto.INT32, TensorProto.INT64):
            return None
        has_psw = len(n.input) > 3 and n.input[3] != ""
        return (a["dim"], a["dtype"], a["out_dtype"], a["mode"], a["variant"], a["prefetch_distance"],
                a["pinned_rows"], a["check"], idx_t.tensor_type.elem_type, has_psw, inits[n.input[0]].data_type,
                a["include_last_offset"])

    groups: list[tuple[tuple, list[int]]] = []
    for i in ops:
        k = key(i)
        if k is None:
            groups.append((None, [i]))
            continue
        for gk, members in groups:
            if gk == k and not any(m in deps[i] or i in deps[m] for m in members):
                members.append(i)
                break
        else:
            groups.append((k, [i]))

    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # position of a group's first node -> its nodes
    removed: set[int] = set()
    new_inits: list[TensorProto] = []
    used_weights: set[str] = set()
    for gi, (gk, members) in enumerate(groups):
        if gk is None or len(members) < 2:
            continue
        dim = gk[0]
        first = _attrs_of(nodes[members[0]])
        pinned = first["pinned_rows"]
        tag = f"dd_group{gi}"
        ns: list[onnx.NodeProto] = []
        tables = [inits[nodes[m].input[0]] for m in members]
        used_weights.update(t.name for t in tables)
        rows = [int(t.dims[0]) for t in tables]
        w0 = tables[0]
        shape = [sum(rows), int(w0.dims[1])]
        if writer is not None:  # streamed: one table's rows in memory at a time, not the blob
            packed = writer.add_parts(f"{tag}_weights", w0.data_type, shape, _packed_rows(tables, pinned))
        else:
            blob = pack_tables([_table_bytes(t) for t in tables], pinned, hot_first=pinned > 0)
            packed = TensorProto(name=f"{tag}_weights", data_type=w0.data_type, dims=shape, raw_data=blob.tobytes())
            del blob
        new_inits.append(packed)

        # Per-table form: each member keeps its own ids, offsets and weights (no index arithmetic in
        # the graph), so the op checks and reports every table's input on its own terms.
        member_inputs = [list(nodes[m].input) + [""] * (4 - len(nodes[m].input)) for m in members]
        op_inputs = [packed.name] + [x[1] for x in member_inputs] + [x[2] for x in member_inputs]
        if gk[9]:
            op_inputs += [x[3] for x in member_inputs]
        new_inits.append(numpy_helper.from_array(np.array([dim] * len(members), dtype=np.int64), f"{tag}_split"))
        attrs = dict(first, table_rows=rows, hot_first=int(pinned > 0))
        out = f"{tag}_output"
        ns.append(helper.make_node(C.OP_TYPE, op_inputs, [out], name=f"{tag}_embedding_bag", domain=C.DOMAIN,
                                   **{k: attrs[k] for k in _ATTR_NAMES}))
        ns.append(helper.make_node("Split", [out, f"{tag}_split"], [nodes[m].output[0] for m in members], axis=1))
        # The fused output's shape: [B, T*D] with the batch symbol of the members' outputs.
        batch_dim = None
        vi = {v.name: v for v in graph.value_info}
        t0 = vi.get(nodes[members[0]].output[0])
        if t0 is not None and t0.type.tensor_type.shape.dim:
            batch_dim = t0.type.tensor_type.shape.dim[0]
        out_vi = helper.make_tensor_value_info(out, types[nodes[members[0]].output[0]].tensor_type.elem_type
                                               if nodes[members[0]].output[0] in types else TensorProto.FLOAT,
                                               [None, dim * len(members)])
        if batch_dim is not None:
            out_vi.type.tensor_type.shape.dim[0].CopyFrom(batch_dim)
        graph.value_info.append(out_vi)
        new_nodes[members[0]] = ns
        removed.update(members)

    if not removed:
        return [[i] for i in ops]
    still_used = {x for i, n in enumerate(nodes) if i not in removed for x in n.input}
    rebuilt = []
    for i, n in enumerate(nodes):
        if i in new_nodes:
            rebuilt.extend(new_nodes[i])
        if i not in removed:
            rebuilt.append(n)
    rebuilt = _topo_sort(rebuilt)
    del graph.node[:]
    graph.node.extend(rebuilt)
    # Remove the packed tables' initializers in place (copying a message re-serialises it).
    for k in reversed(range(len(graph.initializer))):
        name = graph.initializer[k].name
        if name in used_weights and name not in still_used:
            del graph.initializer[k]
    for t in new_inits:
        graph.initializer.append(t)  # copies; new ones are small (big ones are external references)
    _fold_split_concat(graph)
    return [members for _k, members in groups]


def _fold_split_concat(graph: onnx.GraphProto) -> None:
    """Concat(..., split outputs in order, ...) along axis 1 -> Concat(..., fused output, ...): DLRM
    concatenates the pooled tables again right away, so the Split's copy can go."""
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    dead = []
    for split in [n for n in graph.node if n.op_type == "Split" and n.input[0].endswith("_output")
                  and n.input[0].startswith("dd_group")]:
        outs = list(split.output)
        users = {id(c): c for o in outs for c in consumers.get(o, [])}
        if len(users) != 1 or any(o in outputs for o in outs):
            continue
        cat = next(iter(users.values()))
        axis = next((a.i for a in cat.attribute if a.name == "axis"), None)
        ins = list(cat.input)
        if cat.op_type != "Concat" or axis not in (1, -1) or any(ins.count(o) != 1 for o in outs):
            continue
        start = ins.index(outs[0])
        if ins[start:start + len(outs)] != outs:
            continue
        ins[start:start + len(outs)] = [split.input[0]]
        del cat.input[:]
        cat.input.extend(ins)
        dead.append(split)
    for n in dead:
        graph.node.remove(n)
    used = {x for n in graph.node for x in n.input}
    for k in reversed(range(len(graph.initializer))):
        t = graph.initializer[k]
        if t.name.startswith("dd_group") and t.name not in used:
            del graph.initializer[k]
    produced = {o for n in graph.node for o in n.output}
    stale = [v for v in graph.value_info if v.name not in produced]
    for v in stale:
        graph.value_info.remove(v)


# ---------------------------------------------------------------------------------------------
# Export


def _tensor_bytes(t: TensorProto) -> int:
    if t.data_location == TensorProto.EXTERNAL:
        return int(next((e.value for e in t.external_data if e.key == "length"), 0))
    return len(t.raw_data)


def _op_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]


def _batch_symbol(model: onnx.ModelProto) -> str | None:
    """The symbolic first dimension of the first graph input (the batch in DLRM-like models)."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            return dims[0].dim_param
    return None


def _annotate_outputs(model: onnx.ModelProto) -> None:
    """value_info for every op output: [B, T*D] with B the batch symbol where one is known."""
    graph = model.graph
    known = {v.name for v in graph.value_info} | {v.name for v in graph.output}
    types = _value_types(graph)
    for n in _op_nodes(model):
        if n.output[0] in known:
            continue
        a = _attrs_of(n)
        elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}[a["out_dtype"]]
        graph.value_info.append(helper.make_tensor_value_info(
            n.output[0], elem, [_batch_symbol(model), len(a["table_rows"]) * a["dim"]]))


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """model in eval mode inside the block; every submodule's own training flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def check_output_path(out: str) -> None:
    """Raises a one-line error (ValueError, PermissionError) when the file out cannot be written: it
    is a folder, or its folder cannot be created or written. export_onnx checks before any work."""
    path = os.path.abspath(out)
    if os.path.isdir(path):
        raise ValueError(f"output {out} is a folder; give a file name such as {os.path.join(out, 'dlrm.onnx')}")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):  # the nearest existing ancestor must let us create the rest
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {out}: no write permission in {folder}")


@contextlib.contextmanager
def _staged_output(path: str):
    """A fresh folder beside path for the files being written; on success they are renamed into
    place (the external data file first, then the .onnx; a ``<path>.data`` left by an earlier export
    with external data is removed when this one has none), on failure removed: an export never leaves
    a half-written or orphaned file. Yields the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        yield stage
        data_name = os.path.basename(path) + ".data"
        if os.path.exists(os.path.join(stage, data_name)):
            os.replace(os.path.join(stage, data_name), os.path.join(folder, data_name))
        elif os.path.exists(os.path.join(folder, data_name)):
            os.remove(os.path.join(folder, data_name))
        os.replace(os.path.join(stage, os.path.basename(path)), os.path.abspath(path))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _save(proto: onnx.ModelProto, path: str, data_name: str | None) -> None:
    """Writes proto to path; with data_name, initializers of 1 KiB or more go to that file beside it
    (appended after what the table-batching writer put there)."""
    if data_name is None:
        onnx.save_model(onnx.shape_inference.infer_shapes(proto, strict_mode=False), path)
        return
    data_path = os.path.join(os.path.dirname(path), data_name)
    if not os.path.exists(data_path):
        open(data_path, "wb").close()
    # Marked by hand: onnx.save_model(save_as_external_data=True) refuses a location that exists
    # relative to the *current* folder, e.g. when exporting into it.
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and t.HasField("raw_data") and len(t.raw_data) >= 1024:
            external_data_helper.set_external_data(t, data_name)
    onnx.save_model(proto, path)


def _trace(swapped: nn.Module, example_inputs: tuple, *, opset: int, input_names, output_names,
           dynamic_shapes) -> onnx.ModelProto:
    """torch.onnx (dynamo) export of the swapped model: one op node per table. dynamic_shapes None:
    every dimension ``Dim.AUTO`` (see ``default_dynamic_shapes``); dimensions torch.export
    specialised are written as fixed values."""
    if dynamic_shapes is None:
        dynamic_shapes = default_dynamic_shapes(example_inputs)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                swapped, tuple(example_inputs), dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=dynamic_shapes,
                custom_translation_table={_torch_op().default: _translate}, optimize=True, verbose=False)
            proto = program.model_proto
            exported = getattr(program, "exported_program", None)
            pin_specialised_dims(proto, getattr(exported, "range_constraints", None))
        del program, exported
    finally:
        quiet.setLevel(level)
    return proto


def _table_map(proto: onnx.ModelProto, model: nn.Module, bags: list, example_inputs: tuple,
               plans: dict) -> tuple[list[dict], list[tuple[str, nn.EmbeddingBag]]]:
    """Per op node of the traced graph: its module and where its ids and offsets come from (graph
    inputs, a row of a stacked input, or a feature of a KeyedJaggedTensor input), for the file's
    ``dlrm_deploy.tables`` metadata. Returns (entries, (module name, module) per node)."""
    nodes = _op_nodes(proto)
    by_weight = {f"{name}.weight": (name, m) for name, m in bags}
    if all(n.input[0] in by_weight for n in nodes):
        node_bags = [by_weight[n.input[0]] for n in nodes]
    else:
        node_bags = bags[:len(nodes)]
    features = features_of_tables(model)
    rows_of = {f: int(m.num_embeddings) for name, m in bags for f in features.get(name, [])}
    init = {t.name for t in proto.graph.initializer}
    kjts = kjt_inputs(example_inputs, [i.name for i in proto.graph.input if i.name not in init], rows_of)
    source = input_source(proto)
    seen: dict[str, int] = {}
    entries = []
    for (name, m), n in zip(node_bags, nodes):
        (indices, indices_row), (offsets, offsets_row) = source(n.input[1]), source(n.input[2])
        entry = {"module": name, "rows": int(m.num_embeddings), "dim": int(m.embedding_dim),
                 "indices": indices, "offsets": offsets, "include_last_offset": int(m.include_last_offset),
                 "reordered": name in plans}
        if indices_row is not None:
            entry["indices_row"] = indices_row
        if offsets_row is not None:
            entry["offsets_row"] = offsets_row
        k = seen.get(name, 0)
        seen[name] = k + 1
        feature = features[name][k] if k < len(features.get(name, [])) else None
        kjt = next((d for d in kjts if feature in d["keys"]), None)
        if feature is not None and kjt is not None:
            entry.update(indices=None, offsets=None, feature=feature, kjt=kjt)
        entries.append(entry)
    return entries, node_bags


def _checked_bags(model: nn.Module, dtype: str) -> list[tuple[str, nn.EmbeddingBag]]:
    """model's nn.EmbeddingBag modules, each checked as supported; warns when there are none, and
    when a converted quantized table is exported in another storage than its own."""
    bags = _embedding_bags(model)
    if not bags:
        warnings.warn("model has no nn.EmbeddingBag: exporting it without the custom op")
    for name, m in bags:
        _check_supported(name, m)
        quantized = sorted(getattr(m, STORED_ROWS, {}))
        if quantized and dtype not in quantized:
            warnings.warn(f"table '{name}' is {quantized[0]} in the quantized model; exporting it as {dtype} "
                          f"(pass dtype='{quantized[0]}' to keep its rows as they are)")
    return bags


def _table_infos(bags: list, plans: dict, pinned: dict, dtype: str) -> list[TableInfo]:
    """A TableInfo per nn.EmbeddingBag (sizes as Python ints, hot-row statistics where profiled)."""
    tables = []
    for name, m in bags:
        plan, p = plans.get(name), pinned.get(name, 0)
        tables.append(TableInfo(module=name, rows=int(m.num_embeddings), dim=int(m.embedding_dim), dtype=dtype,
                                mode=m.mode, pinned_rows=p, reordered=plan is not None,
                                sampled_lookups=int(plan.counts.sum()) if plan is not None else 0,
                                hot_coverage=hot_coverage(plan.counts, p) if plan is not None else 0.0))
    return tables


def _hot_rows(model: nn.Module, bags: list, hot_rows_from, pinned_rows, dtype: str, coverage: float,
              l2_budget_bytes: int, say) -> tuple[dict, dict]:
    """(hot-row plans {module: HotRowPlan}, pinned rows {module: rows}) for export_onnx; profiling
    runs model in eval mode and restores its training flags."""
    plans, pinned = {}, {}
    if hot_rows_from is not None:
        say("profiling hot rows ...")
        with _eval_mode(model):
            counts = profile_hot_rows(model, hot_rows_from)
        plans = {n: plan_hot_rows(c) for n, c in counts.items()}
        if pinned_rows is None:
            row_bytes = max(storage_row_bytes(int(m.embedding_dim), dtype) for n, m in bags if n in counts)
            p = choose_pinned_rows(list(counts.values()), row_bytes, coverage=coverage, l2_budget_bytes=l2_budget_bytes)
        else:
            p = int(pinned_rows)
        pinned = {n: min(int(p), int(m.num_embeddings)) for n, m in bags if n in counts}
    elif pinned_rows:
        pinned = {n: int(pinned_rows) for n, _m in bags}
    return plans, pinned


def export_onnx(model: nn.Module, example_inputs: tuple, path: str | os.PathLike, *, dtype: str = "fp32",
                variant: str = "auto", prefetch_distance: int = 0, table_batching: bool = True,
                hot_rows_from=None, pinned_rows: int | None = None, hot_coverage_target: float = DEFAULT_HOT_COVERAGE,
                l2_budget_bytes: int = DEFAULT_L2_BUDGET_BYTES, check: str = "checked", opset: int = 18,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                dynamic_shapes=None, external_data: bool | None = None, validate: bool = True,
                overlap: bool = False, progress=None) -> ExportInfo:
    """Exports model to ONNX at path with every nn.EmbeddingBag as ``dlrm_deploy::EmbeddingBag``.

    model: any torch module using nn.EmbeddingBag (mode sum or mean, with or without
      per_sample_weights, either include_last_offset; table sizes may be numpy integers), e.g.
      facebookresearch's DLRM_Net or an unsharded TorchRec EmbeddingBagCollection / DLRM, also with
      torchrec.quant EmbeddingBagCollections: their FBGEMM int8/fp16 rows are stored exactly with
      dtype='int8'/'fp16' (a warning says when dtype differs). It is not modified (the export works
      on a copy; its training flags stay as they were).
    example_inputs: a tuple of forward's positional arguments: tensors, lists/tuples/dicts of them,
      TorchRec KeyedJaggedTensors (exported as values, lengths and weights inputs). ONNX inputs follow
      their flattened order. Every dimension stays dynamic where the model allows (the batch, numbers
      of ids; a feature width a Linear fixes becomes fixed); a warning names the inputs when the
      batch or a number of ids was specialised (use a batch >= 2 unlike the other sizes). Pass
      dynamic_shapes (torch.export's form) to choose otherwise.
    dtype: table storage fp32|fp16|bf16|int8 (int8 = row-wise, see ``quantize_int8_rowwise``);
      the op's output keeps the model's dtype.
    variant, prefetch_distance (lookups), check: op attributes (see docs/op_contract.md).
    table_batching: fuse the tables into one op node per compatible group (packed blob); False
      keeps one node per table.
    hot_rows_from: a sample of ids (see ``profile_hot_rows``: trace path, id tensors or model inputs);
      rows are reordered by descending frequency, ids remapped in the graph, and ``pinned_rows`` hot
      rows per table are marked for L2 (default: the fewest covering ``hot_coverage_target`` of the
      sampled lookups, capped so all tables' pinned rows fit ``l2_budget_bytes`` bytes).
    pinned_rows: hot rows per table (overrides the automatic choice; without hot_rows_from the
      tables are assumed already ordered hottest first).
    opset: default-domain opset; the op's domain is imported at version 1.
    external_data: write initializers to ``<path>.data``; default when they exceed 1 GiB (required
      above 2 GB). Files are written under temporary names beside path and renamed at the end: an
      existing export at path is replaced, a failed export leaves nothing behind.
    validate: run onnx.checker.check_model(full_check=True) on the written file.
    overlap: on ONNX Runtime's CUDA provider, run the lookups on the op's own stream beside the
      dense layers where the graph allows (see export/overlap.py); such a file needs ONNX Runtime
      (TensorRT has no Join plugin).
    progress: callable taking a message string (e.g. print), or None.
    Returns an ExportInfo.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    seconds = {}
    if dtype not in C.DTYPES:
        raise ValueError(f"dtype must be one of {C.DTYPES}, got {dtype!r}")
    C.validate_attributes(dict(table_rows=[1], dim=1, variant=variant, check=check))
    register_onnx_schema()
    path = os.fspath(path)
    check_output_path(path)
    model = dequantize_collections(model)  # TorchRec quantized tables -> float ones carrying their rows
    check_quantized(model)
    example_inputs = canonical_inputs(example_inputs)
    bags = _checked_bags(model, dtype)
    plans, pinned = _hot_rows(model, bags, hot_rows_from, pinned_rows, dtype, hot_coverage_target,
                              l2_budget_bytes, say)
    if hot_rows_from is not None:
        seconds["profile"] = time.perf_counter() - t0

    say(f"swapping {len(bags)} nn.EmbeddingBag module(s) for {C.DOMAIN}::{C.OP_TYPE} (tables {dtype}) ...")
    t = time.perf_counter()
    swapped = swap_embedding_bags(model, dtype=dtype, variant=variant, prefetch_distance=prefetch_distance,
                                  check=check, pinned_rows=pinned, hot_plans=plans).eval()  # a copy
    seconds["swap"] = time.perf_counter() - t

    say("tracing and converting with torch.onnx (dynamo) ...")
    t = time.perf_counter()
    proto = _trace(swapped, example_inputs, opset=opset, input_names=input_names, output_names=output_names,
                   dynamic_shapes=dynamic_shapes)
    del swapped
    seconds["export"] = time.perf_counter() - t
    warn_fixed_dims(proto, example_inputs)
    table_map, node_bags = _table_map(proto, model, bags, example_inputs, plans)
    options = dict(dtype=dtype, variant=variant, prefetch_distance=prefetch_distance,
                   table_batching=bool(table_batching), check=check, pinned_rows=max(pinned.values(), default=0),
                   overlap=bool(overlap))
    meta = {"dlrm_deploy.tables": dumps(table_map), "dlrm_deploy.export": dumps(options)}
    weight_bytes = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_THRESHOLD
    data_name = os.path.basename(path) + ".data" if external_data else None
    with _staged_output(path) as stage:
        groups, op_nodes = _write(proto, os.path.join(stage, os.path.basename(path)), data_name, node_bags, meta,
                                  table_batching=table_batching, validate=validate, overlap=overlap, say=say,
                                  seconds=seconds)
    seconds["total"] = time.perf_counter() - t0
    info = ExportInfo(path=path, external_data=data_name, tables=_table_infos(bags, plans, pinned, dtype),
                      op_nodes=op_nodes, groups=groups,
                      weight_bytes=sum(_tensor_bytes(t) for t in proto.graph.initializer),
                      pinned_rows=max(pinned.values(), default=0), seconds=seconds)
    say(info.summary())
    return info


def _keep_shared_tables_unpacked(proto: onnx.ModelProto) -> None:
    """A table read by several op nodes (e.g. a TorchRec table serving two features) is read through
    an Identity so that table batching, which packs initializer tables, leaves those nodes as they
    are: the table is stored once instead of once per feature."""
    inits = {t.name for t in proto.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in _op_nodes(proto):
        if n.input[0] in inits:
            readers.setdefault(n.input[0], []).append(n)
    for name, nodes in readers.items():
        if len(nodes) < 2:
            continue
        shared = f"{name}__shared"
        proto.graph.node.insert(0, helper.make_node("Identity", [name], [shared], name=f"{name}__shared_table"))
        for n in nodes:
            n.input[0] = shared


def _write(proto: onnx.ModelProto, path: str, data_name: str | None, node_bags: list, meta: dict, *,
           table_batching: bool, validate: bool, overlap: bool, say, seconds: dict) -> tuple[list[list[str]], int]:
    """Table batching, metadata, saving and checking of the traced model at path (a staging name).
    Returns (module names per op node, number of op nodes)."""
    writer = ExternalDataWriter(os.path.join(os.path.dirname(path), data_name), data_name) if data_name else None
    groups = [[name] for name, _m in node_bags]
    if table_batching and len(node_bags) > 1:
        _keep_shared_tables_unpacked(proto)
        say("batching tables into one op node per group ...")
        t = time.perf_counter()
        positions = [i for i, n in enumerate(proto.graph.node) if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]
        pos_to_module = {p: node_bags[k][0] for k, p in enumerate(positions)}
        groups = [[pos_to_module[p] for p in g] for g in batch_tables(proto, writer)]
        seconds["batch"] = time.perf_counter() - t
    if overlap:
        say(f"overlap: {apply_overlap(proto)} op node(s) beside the dense layers")
    _annotate_outputs(proto)
    proto.producer_name = "dlrm_deploy"
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    if not any(o.domain == C.DOMAIN for o in proto.opset_import):
        proto.opset_import.add(domain=C.DOMAIN, version=C.OP_VERSION)
    weight_bytes = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    say(f"saving {os.path.basename(path)} ({weight_bytes / 2**20:.1f} MiB of initializers"
        + (", external data)" if data_name else ")") + " ...")
    t = time.perf_counter()
    _save(proto, path, data_name)
    seconds["save"] = time.perf_counter() - t
    if validate:
        t = time.perf_counter()
        say("checking with onnx.checker (full_check) ...")
        onnx.checker.check_model(path, full_check=True)
        seconds["check"] = time.perf_counter() - t
    return groups, len(_op_nodes(proto))
