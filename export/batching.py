"""Table batching, an ONNX graph pass: the exporter's single-table op nodes fused into one node per
group of compatible tables over a packed table blob (``pack_tables``' layout)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C

from .external_data import ExternalDataWriter, HeldTables
from .onnx_graph import ancestors, attrs_of, is_op, op_nodes, topo_sort, value_types


# int8 dims from which fused tables are stored split_scales=1 (H100, paper shape, ms with the row form /
# split: D 128 0.257 / 0.238, D 64 0.171 / 0.165; below it the row form is faster: D 32 0.116 / 0.120,
# D 16 0.089 / 0.097, where a row with its scale and bias is one or two 32-byte sectors already).
SPLIT_SCALES_MIN_DIM = 64


def _table_bytes(t: TensorProto, held: HeldTables | None = None) -> np.ndarray:
    """An initializer's rows as bytes, uint8 [rows, row bytes] (a held table's own array)."""
    rows = held.rows(t) if held is not None else None
    if rows is not None:
        return rows
    a = numpy_helper.to_array(t)
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


def _packed_rows(tables: list[TensorProto], pinned: int, held: HeldTables | None = None, columns=slice(None)):
    """The packed blob's rows (pack_tables' layout) as a sequence of per-table pieces, decoding one
    table at a time: plain, each table in order; hot_first, every table's first pinned rows, then
    every table's remaining rows. columns: the bytes of each row to take (all by default)."""
    if pinned <= 0:
        for t in tables:
            yield _table_bytes(t, held)[:, columns]
        return
    if any(int(t.dims[0]) < pinned for t in tables):
        raise ValueError("hot_first: every table needs at least pinned_rows rows")
    for t in tables:
        yield _table_bytes(t, held)[:pinned, columns]
    for t in tables:
        yield _table_bytes(t, held)[pinned:, columns]


def _split_parts(tables: list[TensorProto], pinned: int, held: HeldTables | None, dim: int):
    """The packed int8 rows in the split_scales=1 layout, piece by piece: every row's codes (in
    packed order), then every row's scale and bias (8 bytes each, same order)."""
    yield from _packed_rows(tables, pinned, held, slice(0, dim))
    yield from _packed_rows(tables, pinned, held, slice(dim, dim + 8))



def _packed_initializer(name: str, tables: list[TensorProto], pinned: int,
                        writer: ExternalDataWriter | None, held: HeldTables | None = None,
                        split_dim: int = 0) -> TensorProto:
    """The group's packed tables as one initializer: streamed into the external data file by writer
    (one table's rows in memory at a time, not the blob), else inline. split_dim > 0: int8 rows of
    that dim stored split_scales=1 ([rows, dim + 8]: codes, then scales and biases)."""
    w0 = tables[0]
    shape = [sum(int(t.dims[0]) for t in tables), split_dim + 8 if split_dim else int(w0.dims[1])]
    parts = (_split_parts(tables, pinned, held, split_dim) if split_dim
             else _packed_rows(tables, pinned, held))
    if writer is not None:
        return writer.add_parts(name, w0.data_type, shape, parts)
    blob = np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in parts])
    return TensorProto(name=name, data_type=w0.data_type, dims=shape, raw_data=blob.tobytes())


def _has_weights(node: onnx.NodeProto) -> bool:
    """Whether a single-table op node reads per-sample weights."""
    return len(node.input) > 3 and node.input[3] != ""


def _group_key(node: onnx.NodeProto, inits: dict, types: dict) -> tuple | None:
    """What members of a group share (see ``batch_tables``); None for a node that stays alone (several
    tables already, a table that is not an initializer, ids of unknown type)."""
    a = attrs_of(node)
    if len(a["table_rows"]) != 1 or node.input[0] not in inits:
        return None
    idx_t = types.get(node.input[1])
    if idx_t is None or idx_t.tensor_type.elem_type not in (TensorProto.INT32, TensorProto.INT64):
        return None
    return (a["dim"], a["dtype"], a["out_dtype"], a["mode"], a["variant"], a["prefetch_distance"],
            a["pinned_rows"], a["check"], idx_t.tensor_type.elem_type, _has_weights(node),
            inits[node.input[0]].data_type, a["include_last_offset"])


def _group_ops(nodes: list[onnx.NodeProto], ops: list[int], key_of) -> list[tuple[tuple | None, list[int]]]:
    """(key, member positions) per group, first fit in node order: a node joins the first group with
    its key none of whose members it depends on or feeds."""
    deps = ancestors(nodes, ops)
    groups: list[tuple[tuple | None, list[int]]] = []
    for i in ops:
        k = key_of(i)
        if k is None:
            groups.append((None, [i]))
            continue
        for gk, members in groups:
            if gk == k and not any(m in deps[i] or i in deps[m] for m in members):
                members.append(i)
                break
        else:
            groups.append((k, [i]))
    return groups


def _fused_output_info(graph: onnx.GraphProto, types: dict, member_out: str, out: str,
                       width: int) -> onnx.ValueInfoProto:
    """The fused output's value_info: [B, T*D] with the batch symbol of the members' outputs."""
    batch_dim = None
    t0 = {v.name: v for v in graph.value_info}.get(member_out)
    if t0 is not None and t0.type.tensor_type.shape.dim:
        batch_dim = t0.type.tensor_type.shape.dim[0]
    elem = types[member_out].tensor_type.elem_type if member_out in types else TensorProto.FLOAT
    out_vi = helper.make_tensor_value_info(out, elem, [None, width])
    if batch_dim is not None:
        out_vi.type.tensor_type.shape.dim[0].CopyFrom(batch_dim)
    return out_vi


def _fuse_group(graph: onnx.GraphProto, members: list[onnx.NodeProto], tables: list[TensorProto], types: dict,
                tag: str, writer: ExternalDataWriter | None, held: HeldTables | None = None,
                split_scales: bool = True) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """One group's fused op node and the Split restoring its members' outputs, with their new
    initializers (packed tables, split sizes); appends the fused output's value_info to graph.
    split_scales: int8 tables whose dim is a multiple of 8, 64 or more, are stored split_scales=1."""
    first = attrs_of(members[0])
    dim, pinned = first["dim"], first["pinned_rows"]
    split_scales = bool(split_scales and first["dtype"] == "int8" and dim % 8 == 0 and dim >= SPLIT_SCALES_MIN_DIM)
    packed = _packed_initializer(f"{tag}_weights", tables, pinned, writer, held, dim if split_scales else 0)
    split = numpy_helper.from_array(np.array([dim] * len(members), dtype=np.int64), f"{tag}_split")
    # Per-table form: each member keeps its own ids, offsets and weights (no index arithmetic in
    # the graph), so the op checks and reports every table's input on its own terms.
    member_inputs = [list(n.input) + [""] * (4 - len(n.input)) for n in members]
    op_inputs = [packed.name] + [x[1] for x in member_inputs] + [x[2] for x in member_inputs]
    if _has_weights(members[0]):
        op_inputs += [x[3] for x in member_inputs]
    attrs = dict(first, table_rows=[int(t.dims[0]) for t in tables], hot_first=int(pinned > 0),
                 split_scales=int(split_scales))
    out = f"{tag}_output"
    fused = [helper.make_node(C.OP_TYPE, op_inputs, [out], name=f"{tag}_embedding_bag", domain=C.DOMAIN,
                              **{f.name: attrs[f.name] for f in C.FIELDS}),
             helper.make_node("Split", [out, split.name], [n.output[0] for n in members], axis=1)]
    graph.value_info.append(_fused_output_info(graph, types, members[0].output[0], out, dim * len(members)))
    return fused, [packed, split]


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], fused: dict[int, list[onnx.NodeProto]],
                   removed: set[int]) -> None:
    """graph's nodes rebuilt: each group's fused nodes at its first member's position, members
    dropped, then sorted so that producers precede consumers."""
    rebuilt = []
    for i, n in enumerate(nodes):
        if i in fused:
            rebuilt.extend(fused[i])
        if i not in removed:
            rebuilt.append(n)
    rebuilt = topo_sort(rebuilt)
    del graph.node[:]
    graph.node.extend(rebuilt)


def _replace_tables(graph: onnx.GraphProto, dropped: set[str], new_inits: list[TensorProto]) -> None:
    """Removes the dropped initializers in place (copying a message re-serialises it) and appends
    new_inits (copies; new ones are small, big ones are external references)."""
    for k in reversed(range(len(graph.initializer))):
        if graph.initializer[k].name in dropped:
            del graph.initializer[k]
    for t in new_inits:
        graph.initializer.append(t)


def batch_tables(model: onnx.ModelProto, writer: ExternalDataWriter | None = None,
                 held: HeldTables | None = None, split_scales: bool = True) -> list[list[int]]:
    """Fuses the model's single-table dlrm_deploy::EmbeddingBag nodes into one node per group.

    A group shares dim, mode, storage and output dtype, kernel options, pinned_rows, index type,
    include_last_offset and the presence of per-sample weights, and no member depends on another's
    output. Each fused node reads the packed tables (one initializer; ``hot_first`` when
    pinned_rows > 0) and every member's own ids, offsets and weights (the op's per-table form:
    nothing is concatenated or shifted in the graph, so each table keeps PyTorch's semantics and its
    errors name its own inputs); a Split restores the original outputs. writer, when given, receives
    the packed tables (external data); held gives the rows of tables the proto only refers to.
    split_scales: a group of int8 tables (dim a multiple of 8, at least SPLIT_SCALES_MIN_DIM) stores
    every row's codes first, then every row's scale and bias (``split_scales=1``: a row's codes are
    whole 32-byte sectors; faster on the GPU there, docs/benchmarks.md); False keeps each row's
    codes, scale and bias together.
    Returns the original node positions of each fused group (in the old order).
    """
    graph = model.graph
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    types = value_types(graph)
    ops = [i for i, n in enumerate(nodes) if is_op(n)]
    if len(ops) < 2:
        return [[i] for i in ops]
    groups = _group_ops(nodes, ops, lambda i: _group_key(nodes[i], inits, types))
    fused: dict[int, list[onnx.NodeProto]] = {}  # position of a group's first node -> its nodes
    new_inits: list[TensorProto] = []
    used_weights: set[str] = set()
    for gi, (gk, members) in enumerate(groups):
        if gk is None or len(members) < 2:
            continue
        tables = [inits[nodes[m].input[0]] for m in members]
        used_weights.update(t.name for t in tables)
        fused[members[0]], group_inits = _fuse_group(graph, [nodes[m] for m in members], tables, types,
                                                     f"dd_group{gi}", writer, held, split_scales)
        new_inits += group_inits
    if not fused:
        return [[i] for i in ops]
    removed = {m for gk, members in groups if gk is not None and len(members) >= 2 for m in members}
    still_used = {x for i, n in enumerate(nodes) if i not in removed for x in n.input}
    _replace_nodes(graph, nodes, fused, removed)
    _replace_tables(graph, used_weights - still_used, new_inits)
    fold_split_concat(graph)
    return [members for _k, members in groups]


def fold_split_concat(graph: onnx.GraphProto) -> None:
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


def keep_shared_tables_unpacked(proto: onnx.ModelProto) -> None:
    """A table read by several op nodes (e.g. a TorchRec table serving two features) is read through
    an Identity so that table batching, which packs initializer tables, leaves those nodes as they
    are: the table is stored once instead of once per feature."""
    inits = {t.name for t in proto.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in op_nodes(proto):
        if n.input[0] in inits:
            readers.setdefault(n.input[0], []).append(n)
    for name, nodes in readers.items():
        if len(nodes) < 2:
            continue
        shared = f"{name}__shared"
        proto.graph.node.insert(0, helper.make_node("Identity", [name], [shared], name=f"{name}__shared_table"))
        for n in nodes:
            n.input[0] = shared

