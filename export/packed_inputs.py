"""Packed lookup inputs, an ONNX graph pass: a fused ``dlrm_deploy::EmbeddingBag`` node that takes
T tables' ids and offsets as 2T graph inputs (the per-table form table batching writes) takes them
as one ``indices`` input (every table's ids, table-major) and one ``offsets`` input (``[T*B]``, or
``[T*B+1]`` with include_last_offset), and ``per_sample_weights`` likewise: the op's packed form
(docs/op_contract.md), as FBGEMM's TBE and TorchRec's KeyedJaggedTensor carry them.

For a server that builds the model's inputs itself (Triton's python backend, which merges requests
into one batch): 2-3 host-to-device copies a run instead of 2T, and, with ``int32=True``, ids and
offsets in half the bytes where every table's rows fit INT32. A node is rewritten only where each
of its ids/offsets/weights inputs is a graph input that nothing else reads; others stay as they are.
The rewritten tables leave the ``dlrm_deploy.tables`` metadata (their inputs are gone).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from .lengths import TABLES_KEY
from .onnx_graph import attrs_of, op_nodes

INT32_MAX = 2**31 - 1


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def to_packed_inputs(model: onnx.ModelProto, *, int32: bool = True) -> tuple[onnx.ModelProto, int]:
    """(a copy of the model with packed lookup inputs, the number of nodes rewritten)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inputs = {vi.name: vi for vi in g.input}
    inits = {t.name for t in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    for o in g.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    taken = set(inputs) | inits | {x for n in g.node for x in list(n.input) + list(n.output)}
    removed: set[str] = set()
    rewritten = 0
    for node in op_nodes(out):
        attrs = attrs_of(node)
        t = len(attrs.get("table_rows", []))
        if t < 2 or len(node.input) not in (1 + 2 * t, 1 + 3 * t):
            continue  # one table (already packed) or the packed form
        groups = [list(node.input[1:1 + t]), list(node.input[1 + t:1 + 2 * t]), list(node.input[1 + 2 * t:])]
        names = [x for grp in groups for x in grp]
        if any(x not in inputs or x in inits or readers.get(x) != 1 or
               len(inputs[x].type.tensor_type.shape.dim) != 1 for x in names):
            continue
        elem = {inputs[x].type.tensor_type.elem_type for x in groups[0] + groups[1]}
        if len(elem) != 1:
            continue
        idx_type = elem.pop()
        if int32 and idx_type == TensorProto.INT64 and max(attrs["table_rows"]) <= INT32_MAX:
            idx_type = TensorProto.INT32
        prefix = "" if rewritten == 0 else f"lookups{rewritten}_"
        new = [helper.make_tensor_value_info(_unique(f"{prefix}indices", taken), idx_type, [None]),
               helper.make_tensor_value_info(_unique(f"{prefix}offsets", taken), idx_type, [None])]
        if groups[2]:
            new.append(helper.make_tensor_value_info(_unique(f"{prefix}per_sample_weights", taken),
                                                     inputs[groups[2][0]].type.tensor_type.elem_type, [None]))
        for vi in new:  # symbolic lengths of their own
            vi.type.tensor_type.shape.dim[0].dim_param = f"{vi.name}_n"
        at = min(list(g.input).index(inputs[x]) for x in names)
        for vi in reversed(new):
            g.input.insert(at, vi)
        for x in names:
            g.input.remove(inputs[x])
        removed.update(names)
        del node.input[1:]
        node.input.extend(vi.name for vi in new)
        rewritten += 1
    if removed:
        for p in out.metadata_props:
            if p.key == TABLES_KEY:
                tables = [e for e in json.loads(p.value) if e.get("indices") not in removed]
                p.value = json.dumps(tables)
    return out, rewritten


def pack_feeds(exported: onnx.ModelProto, packed: onnx.ModelProto, feeds: dict) -> dict:
    """The packed model's feeds from the exported model's (`packed` from to_packed_inputs): per
    rewritten node, its tables' ids concatenated and their offsets shifted by the ids before them
    (include_last_offset: one total at the end), in the packed inputs' types."""
    names = {i.name for i in packed.graph.input}
    types = {i.name: i.type.tensor_type.elem_type for i in packed.graph.input}
    out = {k: v for k, v in feeds.items() if k in names}
    new_nodes = {n.name: n for n in packed.graph.node}
    for node in op_nodes(exported):
        new = list(new_nodes[node.name].input[1:])
        if new == list(node.input[1:]):
            continue
        attrs = attrs_of(node)
        t = len(attrs["table_rows"])
        ilo = int(attrs["include_last_offset"])
        ids = [feeds[x] for x in node.input[1:1 + t]]
        offs, base = [], 0
        for k, x in enumerate(node.input[1 + t:1 + 2 * t]):
            o = np.asarray(feeds[x]).astype(np.int64)
            offs.append((o[:-1] if ilo else o) + base)
            base += ids[k].size
        if ilo:
            offs.append(np.array([base]))
        dtype = helper.tensor_dtype_to_np_dtype(types[new[0]])
        out[new[0]] = np.concatenate(ids).astype(dtype)
        out[new[1]] = np.concatenate(offs).astype(dtype)
        if len(new) > 2:
            out[new[2]] = np.concatenate([feeds[x] for x in node.input[1 + 2 * t:]])
    return out
