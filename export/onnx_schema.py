"""The ONNX schema of ``dlrm_deploy::EmbeddingBag``, derived from the op contract.

Registering it (``register_onnx_schema()``) lets the onnx checker validate the node (attribute
names and types, input count, element types) and gives ONNX shape inference the output shape
``[B, T*D]`` (B is known only when the number of offsets is a number, not a symbol).
"""

from __future__ import annotations

import onnx
from onnx import defs

from dlrm_deploy import contract as C

_ONNX_ELEM = {d: i.onnx for d, i in C.DTYPE_INFO.items() if i.output}
_OUT_TYPES = [i.onnx_type for i in C.DTYPE_INFO.values() if i.output]


def _attr_value(ctx, name: str, default):
    attr = ctx.get_attribute(name)
    if attr is None:
        return default
    return onnx.helper.get_attribute_value(attr)


def _infer(ctx) -> None:
    """Output: [B, T*D] of out_dtype; B from the (first table's) offsets when its length is known."""
    table_rows = _attr_value(ctx, "table_rows", [])
    dim = _attr_value(ctx, "dim", 0)
    out_dtype = _attr_value(ctx, "out_dtype", C.FIELD_BY_NAME["out_dtype"].default)
    if isinstance(out_dtype, bytes):
        out_dtype = out_dtype.decode()
    ilo = int(_attr_value(ctx, "include_last_offset", 0))
    num_tables = len(table_rows)
    n = ctx.get_num_inputs()
    per_table = num_tables > 0 and n in (1 + 2 * num_tables, 1 + 3 * num_tables)
    offsets_at, per = (1 + num_tables, 1) if per_table else (2, num_tables)
    batch_dim = onnx.TensorShapeProto.Dimension()
    offsets_type = ctx.get_input_type(offsets_at) if n > offsets_at and ctx.has_input(offsets_at) else None
    if offsets_type is not None and offsets_type.tensor_type.HasField("shape"):
        dims = offsets_type.tensor_type.shape.dim
        if len(dims) == 1 and dims[0].HasField("dim_value") and num_tables > 0:
            bags = dims[0].dim_value - ilo
            if bags >= 0 and bags % per == 0:
                batch_dim.dim_value = bags // per
    out = onnx.TypeProto()
    out.tensor_type.elem_type = _ONNX_ELEM.get(out_dtype, onnx.TensorProto.FLOAT)
    out.tensor_type.shape.dim.append(batch_dim)
    d = out.tensor_type.shape.dim.add()
    if num_tables > 0 and dim > 0:
        d.dim_value = num_tables * dim
    ctx.set_output_type(0, out)


def build_onnx_schema() -> defs.OpSchema:
    """The OpSchema of the op: inputs, type constraints and attributes from ``dlrm_deploy.contract``."""
    fp = defs.OpSchema.FormalParameter
    option = defs.OpSchema.FormalParameterOption
    attr_type = {C.INT: defs.OpSchema.AttrType.INT, C.STRING: defs.OpSchema.AttrType.STRING,
                 C.INTS: defs.OpSchema.AttrType.INTS}
    # One heterogeneous variadic input for all of them (weights, indices, further lookups, see
    # C.INPUTS): the ORT op and the TensorRT plugin check each input's type and shape themselves,
    # and torch's ONNX exporter binds positional arguments correctly only to a leading variadic.
    doc = "; ".join(f"{name} ({types}): {d}" for name, types, d in C.INPUTS)
    inputs = [fp("inputs", "V", doc, param_option=option.Variadic, is_homogeneous=False, min_arity=3)]
    outputs = [fp(name, "O", doc) for name, _types, doc in C.OUTPUTS]
    constraints = [
        ("V", [i.onnx_type for i in C.DTYPE_INFO.values()] + ["tensor(int32)", "tensor(int64)"],
         "tables, ids, offsets, per-sample weights"),
        ("O", _OUT_TYPES, "output (out_dtype)"),
    ]
    attrs = []
    for f in C.FIELDS:
        if f.default == "":
            attrs.append(defs.OpSchema.Attribute(f.name, attr_type[f.kind], f.doc, required=True))
        else:
            value = int(f.default) if f.kind == C.INT else f.default
            attrs.append(defs.OpSchema.Attribute(f.name, onnx.helper.make_attribute(f.name, value), f.doc))
    schema = defs.OpSchema(C.OP_TYPE, C.DOMAIN, C.OP_VERSION,
                           "Table-batched EmbeddingBag (see docs/op_contract.md).",
                           inputs=inputs, outputs=outputs, type_constraints=constraints, attributes=attrs)
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def _infer_join(ctx) -> None:
    """Join's output: [B, sum of the inputs' second dimensions] of the inputs' type."""
    first = ctx.get_input_type(0)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = first.tensor_type.elem_type if first is not None else onnx.TensorProto.FLOAT
    batch = out.tensor_type.shape.dim.add()
    width = out.tensor_type.shape.dim.add()
    total = 0
    for i in range(ctx.get_num_inputs()):
        t = ctx.get_input_type(i)
        dims = t.tensor_type.shape.dim if t is not None and t.tensor_type.HasField("shape") else []
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            total = None
            break
        total += dims[1].dim_value
        if i == 0 and dims[0].HasField("dim_param"):
            batch.dim_param = dims[0].dim_param
        elif i == 0 and dims[0].HasField("dim_value"):
            batch.dim_value = dims[0].dim_value
    if total is not None:
        width.dim_value = total
    ctx.set_output_type(0, out)


def build_join_schema() -> defs.OpSchema:
    """The OpSchema of ``dlrm_deploy::Join`` (the companion of overlap=1, see export/overlap.py)."""
    fp = defs.OpSchema.FormalParameter
    (l_name, _t, l_doc), (o_name, _t2, o_doc) = C.JOIN_INPUTS
    inputs = [fp(l_name, "T", l_doc),
              fp(o_name, "T", o_doc, param_option=defs.OpSchema.FormalParameterOption.Variadic, min_arity=1)]
    attrs = [defs.OpSchema.Attribute("axis", onnx.helper.make_attribute("axis", 1), "concatenation axis (1)"),
             defs.OpSchema.Attribute("position", onnx.helper.make_attribute("position", 0),
                                     "where the first input goes in the concatenation")]
    schema = defs.OpSchema(C.JOIN_OP_TYPE, C.DOMAIN, C.OP_VERSION,
                           "Concat along axis 1 after an overlapped EmbeddingBag finished (docs/op_contract.md).",
                           inputs=inputs, outputs=[fp("output", "T", "the concatenation")],
                           type_constraints=[("T", _OUT_TYPES, "element type")], attributes=attrs)
    schema.set_type_and_shape_inference_function(_infer_join)
    return schema


def _infer_interaction(ctx) -> None:
    """DotInteraction's output: float [B, prefix input's width + len(pairs)] (width unknown when the
    prefix input's is)."""
    out = onnx.TypeProto()
    out.tensor_type.elem_type = onnx.TensorProto.FLOAT
    batch, width = out.tensor_type.shape.dim.add(), out.tensor_type.shape.dim.add()
    first = ctx.get_input_type(0)
    dims = first.tensor_type.shape.dim if first is not None and first.tensor_type.HasField("shape") else []
    if len(dims) == 2 and dims[0].HasField("dim_param"):
        batch.dim_param = dims[0].dim_param
    elif len(dims) == 2 and dims[0].HasField("dim_value"):
        batch.dim_value = dims[0].dim_value
    pairs, prefix = ctx.get_attribute("pairs"), ctx.get_attribute("prefix")
    n_pairs = len(pairs.ints) if pairs is not None else None
    k = prefix.i if prefix is not None else -1
    extra = 0
    if k >= 0:
        t = ctx.get_input_type(k)
        pd = t.tensor_type.shape.dim if t is not None and t.tensor_type.HasField("shape") else []
        extra = pd[1].dim_value if len(pd) == 2 and pd[1].HasField("dim_value") else None
    if n_pairs is not None and extra is not None:
        width.dim_value = extra + n_pairs
    ctx.set_output_type(0, out)


def build_interaction_schema() -> defs.OpSchema:
    """The OpSchema of ``dlrm_deploy::DotInteraction`` (export/interaction.py)."""
    fp = defs.OpSchema.FormalParameter
    (name, _t, doc), = C.INTERACTION_INPUTS
    inputs = [fp(name, "T", doc, param_option=defs.OpSchema.FormalParameterOption.Variadic, min_arity=1)]
    kinds = {"int": defs.OpSchema.AttrType.INT, "ints": defs.OpSchema.AttrType.INTS}
    attrs = []
    for a_name, kind, a_doc in C.INTERACTION_ATTRIBUTES:
        if a_name == "prefix":
            attrs.append(defs.OpSchema.Attribute(a_name, onnx.helper.make_attribute(a_name, -1), a_doc))
        else:
            attrs.append(defs.OpSchema.Attribute(a_name, kinds[kind], a_doc, required=True))
    schema = defs.OpSchema(C.INTERACTION_OP_TYPE, C.DOMAIN, C.OP_VERSION,
                           "DLRM's dot interaction in one node (docs/op_contract.md).", inputs=inputs,
                           outputs=[fp("output", "T", "[B, prefix width + len(pairs)]")],
                           type_constraints=[("T", ["tensor(float)"], "float")], attributes=attrs)
    schema.set_type_and_shape_inference_function(_infer_interaction)
    return schema


def _dims(ctx, i: int):
    t = ctx.get_input_type(i) if i < ctx.get_num_inputs() and ctx.has_input(i) else None
    return list(t.tensor_type.shape.dim) if t is not None and t.tensor_type.HasField("shape") else None


def _infer_mlp(ctx) -> None:
    """Mlp's output: float [B, N_L], B from X's first dimension, N_L from the last bias (or weight)."""
    out = onnx.TypeProto()
    out.tensor_type.elem_type = onnx.TensorProto.FLOAT
    batch, width = out.tensor_type.shape.dim.add(), out.tensor_type.shape.dim.add()
    x = _dims(ctx, 0)
    if x is not None and len(x) == 2:
        batch.CopyFrom(x[0])
    n = ctx.get_num_inputs()
    if n >= 3 and n % 2 == 1:
        for source in (_dims(ctx, n - 1), _dims(ctx, n - 2)):  # b_L [N_L], W_L [N_L, K_L]
            if source and source[0].HasField("dim_value"):
                width.dim_value = source[0].dim_value
                break
    ctx.set_output_type(0, out)


def build_mlp_schema() -> defs.OpSchema:
    """The OpSchema of ``dlrm_deploy::Mlp`` (export/mlp.py)."""
    fp = defs.OpSchema.FormalParameter
    (name, _t, doc), = C.MLP_INPUTS
    inputs = [fp(name, "T", doc, param_option=defs.OpSchema.FormalParameterOption.Variadic, min_arity=3)]
    attrs = [defs.OpSchema.Attribute(a_name, defs.OpSchema.AttrType.INTS, a_doc, required=True) if kind == "ints"
             else defs.OpSchema.Attribute(a_name, onnx.helper.make_attribute(a_name, 0), a_doc)
             for a_name, kind, a_doc in C.MLP_ATTRIBUTES]
    schema = defs.OpSchema(C.MLP_OP_TYPE, C.DOMAIN, C.OP_VERSION,
                           "A chain of Linear layers with activations in one node (docs/op_contract.md).",
                           inputs=inputs, outputs=[fp("Y", "T", "[B, N_L]")],
                           type_constraints=[("T", ["tensor(float)"], "float")], attributes=attrs)
    schema.set_type_and_shape_inference_function(_infer_mlp)
    return schema


def register_onnx_schema() -> None:
    """Registers the ops' schemas with the onnx package of this process (idempotent)."""
    for op_type, build in ((C.OP_TYPE, build_onnx_schema), (C.JOIN_OP_TYPE, build_join_schema),
                           (C.INTERACTION_OP_TYPE, build_interaction_schema), (C.MLP_OP_TYPE, build_mlp_schema)):
        try:
            defs.get_schema(op_type, C.OP_VERSION, C.DOMAIN)
        except defs.SchemaError:
            defs.register_schema(build())
