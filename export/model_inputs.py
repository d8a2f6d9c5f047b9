"""The exported model's inputs: which dimensions stay dynamic, where each table's ids and offsets
come from, and the checks that tell the user when torch.export fixed a dimension they meant to vary.

``export_onnx`` marks every dimension of every example tensor ``Dim.AUTO`` (torch.export keeps it
dynamic where the model allows and specialises it otherwise), pins the dimensions torch.export
specialised to their value in the ONNX file, and warns, naming the input, when the batch or a
number of ids was fixed. Pure helpers over ``onnx.ModelProto``; no torch module is run here.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree
from onnx import numpy_helper


def json_safe(value):
    """value with numpy scalars and arrays (e.g. a model's ``np.int64`` table sizes) as Python types,
    recursively through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def dumps(value) -> str:
    """JSON text of value (numpy scalars allowed)."""
    return json.dumps(json_safe(value))


def tensor_leaves(example_inputs) -> list[torch.Tensor]:
    """The tensors of example_inputs in torch.export's (pytree) order: the ONNX inputs' order."""
    return [x for x in pytree.tree_leaves(tuple(example_inputs)) if isinstance(x, torch.Tensor)]


def default_dynamic_shapes(example_inputs):
    """A ``torch.export.ShapesCollection`` with ``Dim.AUTO`` on every dimension of every tensor.

    torch.export keeps a dimension dynamic where the model allows it and specialises it where it does
    not (e.g. a Linear's input width), so the batch stays dynamic wherever it sits (e.g. dim 1 of
    DLRM_Net's stacked [T, B] offsets). Works through any pytree input (lists, dicts, TorchRec's
    KeyedJaggedTensor)."""
    shapes = torch.export.ShapesCollection()
    for x in tensor_leaves(example_inputs):
        if x.dim() > 0:
            shapes[x] = {d: torch.export.Dim.AUTO for d in range(x.dim())}
    return shapes


def pin_specialised_dims(proto: onnx.ModelProto, range_constraints: dict) -> None:
    """Writes dimensions whose symbol torch.export bounded to a single value (``VR[v, v]``) as that
    fixed value in the graph's inputs, outputs and value_info (the exporter leaves them symbolic)."""
    fixed = {}
    for sym, vr in (range_constraints or {}).items():
        lo, hi = getattr(vr, "lower", None), getattr(vr, "upper", None)
        if getattr(lo, "is_integer", False) and lo == hi:  # sympy integers (not +-oo)
            fixed[str(sym)] = int(lo)
    if not fixed:
        return
    graph = proto.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in fixed:
                d.dim_value = fixed[d.dim_param]


def _dims(vi) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in vi.type.tensor_type.shape.dim]


def warn_fixed_dims(proto: onnx.ModelProto, example_inputs) -> list[str]:
    """Warns (UserWarning) when torch.export fixed what should vary; returns the messages.

    The batch: an output whose first dimension is fixed to B names every input dimension fixed to B
    (e.g. the offsets of a per-table loop, or a model that specialised on the example's batch).
    Ids: a 1-D input (ids, offsets, lengths, per-sample weights) of fixed length."""
    messages = []
    inputs = [vi for vi in proto.graph.input]
    init = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in inputs if vi.name not in init]
    for out in proto.graph.output:
        dims = _dims(out)
        if not dims or not isinstance(dims[0], int):
            continue
        b = dims[0]
        culprits = [f"'{vi.name}' dim {k}" for vi in inputs for k, d in enumerate(_dims(vi)) if d == b]
        messages.append(f"the batch is fixed: output '{out.name}' has {b} rows for any input"
                        + (f"; fixed input dimensions of size {b}: {', '.join(culprits)}" if culprits else "")
                        + ". torch.export specialised them: export with a batch >= 2 that differs from every "
                        "other size of the example inputs, or pass dynamic_shapes")
    for vi in inputs:
        dims = _dims(vi)
        if len(dims) == 1 and isinstance(dims[0], int):
            messages.append(f"ONNX input '{vi.name}' has a fixed length {dims[0]}: torch.export specialised it "
                            "(export with an example of another length, >= 2, or pass dynamic_shapes)")
    for m in messages:
        warnings.warn(m, stacklevel=3)
    return messages


def _constant_int(name: str, constants: dict) -> int | None:
    """The scalar integer value of an initializer or Constant node output, else None."""
    if name not in constants:
        return None
    arr = constants[name]
    return int(arr.reshape(-1)[0]) if arr.size == 1 and np.issubdtype(arr.dtype, np.integer) else None


def _is_unbind(node) -> bool:
    """True for SplitToSequence(x) along axis 0 into rows (keepdims 0, no split sizes): x.unbind(0)."""
    if node is None or node.op_type != "SplitToSequence" or len(node.input) > 1:
        return False
    attrs = {a.name: a.i for a in node.attribute}
    return attrs.get("axis", 0) == 0 and attrs.get("keepdims", 1) == 0


def input_source(proto: onnx.ModelProto):
    """A function: value name -> (graph input, row) it comes from through remap Gathers, Casts,
    Reshapes and Slices, with row = k when the value is row k of a 2-D input (``x[k]`` or iterating
    x, as DLRM_Net does over its stacked offsets and ids), else None; (None, None) when computed
    otherwise."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {v.name for v in graph.input}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer  # tables may be held: not read
                 if t.data_location != onnx.TensorProto.EXTERNAL}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def source(name):
        row = None
        for _ in range(16):
            if name in inputs or name not in producer:
                break
            n = producer[name]
            if n.op_type == "Gather":
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                k = _constant_int(n.input[1], constants)
                if k is not None and axis == 0 and row is None:  # x[k]: a row of a stacked input
                    name, row = n.input[0], k
                else:  # a remap: table[ids]
                    name = n.input[1]
            elif n.op_type == "SequenceAt" and row is None and _is_unbind(producer.get(n.input[0])):
                k = _constant_int(n.input[1], constants)  # x.unbind()[k] (iterating a stacked input)
                if k is None:
                    return None, None
                name, row = producer[n.input[0]].input[0], k
            elif n.op_type in ("Cast", "Identity", "Reshape", "Slice", "Squeeze", "Clip"):
                name = n.input[0]
            elif n.op_type == "Where":  # a hot-row remap: Where(valid, remap[ids], ids)
                name = n.input[2]
            else:
                return None, None
        return (name, row) if name in inputs else (None, None)

    return source
