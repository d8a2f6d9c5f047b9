"""Lengths form of an exported model: per-table offsets inputs become per-sample lengths inputs.

``to_lengths_form(model)`` is a graph pass over an exported ONNX model (the exporter's per-table
``indices_t`` / ``offsets_t`` inputs, listed in its ``dlrm_deploy.tables`` metadata): every
``offsets_t`` graph input is replaced by ``lengths_t`` (ids per sample, TorchRec's
KeyedJaggedTensor form), and the offsets are derived inside the graph with standard ONNX ops:
``offsets = CumSum(lengths) - lengths`` (``Concat(0, CumSum(lengths))`` with include_last_offset).
Requests in this form merge by plain concatenation, which is what Triton's ragged batching does.

``flat_dense=True`` also makes each per-sample input ``[B, F]`` a 1-D ``[B*F]`` input reshaped to
``[-1, F]`` in the graph: Triton's onnxruntime backend hands ragged inputs to the model as 1-D
tensors. The pass writes ``dlrm_deploy.input_form`` (``lengths`` / ``lengths_flat``) and the
lengths names into the metadata; nothing else in the graph changes.

    python -m dlrm_deploy.export.lengths model.onnx model_lengths.onnx [--flat-dense]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import onnx
import numpy as np
from onnx import helper, numpy_helper

FORM_KEY = "dlrm_deploy.input_form"
TABLES_KEY = "dlrm_deploy.tables"


def lengths_name(offsets: str, taken: set[str]) -> str:
    """The input that carries per-sample lengths in place of the offsets input `offsets` (a name not
    in taken): the exported lengths form and the python backend's request form use the same."""
    name = offsets.replace("offsets", "lengths") if "offsets" in offsets else f"{offsets}_lengths"
    while name in taken:
        name += "_"
    return name


def _offsets_nodes(lengths: str, offsets: str, elem_type: int, include_last_offset: bool) -> tuple[list, list]:
    """(nodes, initializers) computing `offsets` from `lengths` with CumSum."""
    axis = numpy_helper.from_array(np.array(0, np.int64), f"{lengths}__axis")
    cum = f"{lengths}__cumsum"
    nodes = [helper.make_node("CumSum", [lengths, axis.name], [cum], name=f"{lengths}__cumsum")]
    inits = [axis]
    if include_last_offset:
        np_type = helper.tensor_dtype_to_np_dtype(elem_type)
        zero = numpy_helper.from_array(np.zeros(1, np_type), f"{lengths}__zero")
        inits.append(zero)
        nodes.append(helper.make_node("Concat", [zero.name, cum], [offsets], axis=0, name=f"{lengths}__offsets"))
    else:
        nodes.append(helper.make_node("Sub", [cum, lengths], [offsets], name=f"{lengths}__offsets"))
    return nodes, inits


def _flatten_dense(graph, name: str, width: int) -> list:
    """Makes input `name` [B, width] a 1-D input reshaped to [-1, width] for its consumers."""
    vi = next(v for v in graph.input if v.name == name)
    inner = f"{name}__2d"
    for node in graph.node:
        for k, x in enumerate(node.input):
            if x == name:
                node.input[k] = inner
    for out in graph.output:
        if out.name == name:
            raise ValueError(f"input '{name}' is also a graph output; cannot flatten it")
    shape = numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}__shape")
    graph.initializer.append(shape)
    dims = vi.type.tensor_type.shape.dim
    del dims[:]
    dims.add().dim_param = f"{name}_elements"
    return [helper.make_node("Reshape", [name, shape.name], [inner], name=f"{name}__reshape")]


def _dense_width(model, name: str) -> int:
    from dlrm_deploy.runtime.model_io import describe_onnx

    t = next(t for t in describe_onnx(model).inputs if t.name == name)
    width = t.dims[1] if len(t.dims) == 2 and isinstance(t.dims[1], int) else t.resolved.get(1)
    if len(t.dims) != 2 or not width:
        raise ValueError(f"input '{name}' {t.dims}: flat_dense needs [B, F] with a known F")
    return int(width)


def to_lengths_form(model: onnx.ModelProto, *, flat_dense: bool = False) -> onnx.ModelProto:
    """The model with per-sample lengths inputs in place of its per-table offsets inputs (a copy).

    ValueError for a model without the exporter's per-table metadata, with stacked [T, B] offsets,
    or already in lengths form."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    meta = {p.key: p.value for p in out.metadata_props}
    if FORM_KEY in meta:
        raise ValueError(f"the model is already in {meta[FORM_KEY]} form")
    tables = json.loads(meta.get(TABLES_KEY, "[]"))
    inputs = {vi.name: vi for vi in g.input}
    if not tables or any(t.get("offsets") not in inputs or t.get("offsets_row") is not None for t in tables):
        raise ValueError("to_lengths_form needs the exporter's per-table 1-D offsets inputs (dlrm_deploy.tables "
                         "metadata); stacked [T, B] offsets and hand-made graphs are not supported")
    dense = [vi.name for vi in g.input if vi.name not in {t["indices"] for t in tables} | {t["offsets"] for t in tables}
             and vi.name not in {i.name for i in g.initializer}]
    widths = {n: _dense_width(model, n) for n in dense} if flat_dense else {}
    taken = set(inputs)
    new_nodes, new_inits = [], []
    for t in tables:
        off = inputs[t["offsets"]]
        ilo = int(t.get("include_last_offset", 0))
        lname = lengths_name(off.name, taken)
        taken.add(lname)
        elem = off.type.tensor_type.elem_type
        batch_dim = off.type.tensor_type.shape.dim[0].dim_param if not ilo else None
        lengths_vi = helper.make_tensor_value_info(lname, elem, [batch_dim or f"{lname}_samples"])
        g.input.insert(list(g.input).index(off), lengths_vi)
        g.input.remove(off)
        nodes, inits = _offsets_nodes(lname, off.name, elem, bool(ilo))
        new_nodes += nodes
        new_inits += inits
        t["lengths"] = lname
    for name, width in widths.items():
        new_nodes += _flatten_dense(g, name, width)
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + old_nodes)
    g.initializer.extend(new_inits)
    for p in out.metadata_props:
        if p.key == TABLES_KEY:
            p.value = json.dumps(tables)
    out.metadata_props.add(key=FORM_KEY, value="lengths_flat" if flat_dense else "lengths")
    if flat_dense:
        out.metadata_props.add(key="dlrm_deploy.flat_dense", value=json.dumps(widths))
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in out.opset_import):
        raise ValueError("CumSum needs ONNX opset 11 or later")
    return out


def convert_file(src, dst, *, flat_dense: bool = False) -> pathlib.Path:
    """Writes the lengths form of the ONNX file `src` to `dst` (external data: tables stay in the
    source's data file, referenced by `dst`'s relative location, so write `dst` beside `src`)."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    has_external = any(e.key == "location" for i in model.graph.initializer for e in i.external_data)
    if has_external and src.resolve().parent != dst.resolve().parent:
        raise ValueError(f"{src.name} keeps its tables in external data: write the lengths form into the same folder")
    onnx.save(to_lengths_form(model, flat_dense=flat_dense), str(dst))
    return dst


def main(argv=None) -> int:
    """``python -m dlrm_deploy.export.lengths SRC DST [--flat-dense]``."""
    p = argparse.ArgumentParser(description="Per-table offsets inputs -> per-sample lengths inputs (ONNX graph pass)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--flat-dense", action="store_true", help="1-D per-sample inputs (Triton's ragged batching)")
    args = p.parse_args(argv)
    try:
        convert_file(args.src, args.dst, flat_dense=args.flat_dense)
    except (ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        print(f"lengths: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
