"""ONNX graph pass ``fuse_interaction``: DLRM's dot interaction as one ``dlrm_deploy::DotInteraction``.

The interaction of DLRM (facebookresearch/dlrm's ``interact_features`` with ``arch_interaction_op
= "dot"``, and this package's ``export.dlrm``) exports as

    S = Concat(axis=1)(x, pooled...)          [B, n*D]   (or overlap's Join, or any [B, n*D] tensor)
    V = Reshape(S, [-1, n, D])
    Z = MatMul(V, Transpose(V, perm=[0, 2, 1]))   [B, n, n]
    F = Reshape(Z, [-1, n*n])
    G = Gather(F, pairs, axis=1)              [B, P]  (pairs: a constant, e.g. the lower triangle)
    R = Concat(axis=1)(x, G)                  (optional)

which ONNX Runtime runs as four kernels (Concat, a batched MatMul, Gather, Concat: 37 us at batch
2048 with 13 x 128 fp32 vectors on an H100, where the fused kernel reads the vectors once).
The pass replaces the chain by one node taking S's parts (the Concat's or Join's inputs, when S is
one used only here) and writing G, or R when the last Concat is (one of those parts, G). In place
of a Join (export's overlap pass) the fused node itself joins the overlapped lookups' stream before
its kernel, so no copy is made of the pooled rows. Element type
float only. Runs in ONNX Runtime (CPU and CUDA providers) with our op library; TensorRT has no
plugin for it, so files meant for trt-build are exported without it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlrm_deploy import contract as C

OP_TYPE = C.INTERACTION_OP_TYPE
MAX_PARTS = 16  # DD_INTERACTION_MAX_PARTS (cpp/include/dlrm_deploy/interaction.h)


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class _Graph:
    """Producers, consumers, constants and float-typed values of a graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.inits = {t.name: t for t in graph.initializer}

    def const(self, name: str) -> np.ndarray | None:
        """A constant's value (initializer or Constant node), else None."""
        if name in self.inits:
            t = self.inits[name]
            return None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            v = _attr(n, "value")
            return numpy_helper.to_array(v) if v is not None else None
        return None

    def only_use(self, name: str, node: onnx.NodeProto) -> bool:
        users = self.consumers.get(name, [])
        return name not in self.outputs and len(users) == 1 and users[0] is node

    def single(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The one consumer of name when it is a standard op_type node."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        n = users[0]
        return n if n.op_type == op_type and n.domain in ("", "ai.onnx") else None


def _shape_is(value: np.ndarray | None, tail: tuple[int, ...]) -> bool:
    return (value is not None and value.ndim == 1 and len(value) == len(tail) + 1 and int(value[0]) in (-1, 0)
            and tuple(int(v) for v in value[1:]) == tail)


def _float_widths(model: onnx.ModelProto, names: list[str]) -> list[int] | None:
    """Static column counts of 2-D float tensors names, from shape inference; None if unknown."""
    from .onnx_schema import register_onnx_schema

    register_onnx_schema()
    light = onnx.ModelProto()  # the graph without initializer data: tables may be gigabytes
    light.CopyFrom(model) if model.ByteSize() < (64 << 20) else _without_data(model, light)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:  # noqa: BLE001 - no fusion when the shapes are unknown
        return None
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    widths = []
    for name in names:
        v = infos.get(name)
        if v is None or v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            return None
        dims = v.type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            return None
        widths.append(dims[1].dim_value)
    return widths


def _without_data(model: onnx.ModelProto, light: onnx.ModelProto) -> None:
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    for t in model.graph.initializer:
        g.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)


def _match(g: _Graph, reshape: onnx.NodeProto) -> dict | None:
    """The interaction chain starting at a Reshape [-1, n, D], or None."""
    src = reshape.input[0]
    shape = g.const(reshape.input[1]) if len(reshape.input) > 1 else None
    if shape is None or shape.ndim != 1 or len(shape) != 3:
        return None
    n, dim = int(shape[1]), int(shape[2])
    if n < 1 or dim < 1 or not _shape_is(shape, (n, dim)):
        return None
    users = g.consumers.get(reshape.output[0], [])
    if reshape.output[0] in g.outputs or len(users) != 2:
        return None
    transpose = next((u for u in users if u.op_type == "Transpose"), None)
    matmul = next((u for u in users if u.op_type == "MatMul"), None)
    if transpose is None or matmul is None or list(_attr(transpose, "perm", [])) != [0, 2, 1]:
        return None
    if list(matmul.input) != [reshape.output[0], transpose.output[0]] or not g.only_use(transpose.output[0], matmul):
        return None
    flat = g.single(matmul.output[0], "Reshape")
    if flat is None or not _shape_is(g.const(flat.input[1]), (n * n,)):
        return None
    gather = g.single(flat.output[0], "Gather")
    pairs = g.const(gather.input[1]) if gather is not None else None
    if gather is None or _attr(gather, "axis", 0) != 1 or pairs is None or pairs.ndim != 1:
        return None
    pairs = pairs.astype(np.int64)
    pairs = np.where(pairs < 0, pairs + n * n, pairs)
    if len(pairs) == 0 or pairs.min() < 0 or pairs.max() >= n * n:
        return None
    return dict(src=src, n=n, dim=dim, pairs=pairs, chain=[reshape, transpose, matmul, flat, gather], gather=gather)


def fuse_interaction(model: onnx.ModelProto) -> int:
    """Replaces every dot-interaction chain (module docstring) by one DotInteraction node, in
    place. Returns how many were fused."""
    fused = 0
    while True:
        g = _Graph(model.graph)
        found = None
        for node in model.graph.node:
            if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
                found = _match(g, node)
                if found:
                    break
        if not found or not _rewrite(model, g, found):
            return fused
        fused += 1


def _rewrite(model: onnx.ModelProto, g: _Graph, m: dict) -> bool:
    remove = list(m["chain"])
    parts = [m["src"]]
    cat = g.producer.get(m["src"])
    if (cat is not None and cat.op_type == "Concat" and cat.domain in ("", "ai.onnx") and _attr(cat, "axis") in (1, -1)
            and g.only_use(m["src"], m["chain"][0]) and len(cat.input) <= MAX_PARTS):
        parts = list(cat.input)
        remove.append(cat)
    elif (cat is not None and cat.op_type == C.JOIN_OP_TYPE and cat.domain == C.DOMAIN
          and g.only_use(m["src"], m["chain"][0]) and len(cat.input) <= MAX_PARTS):
        # overlap's Join: the fused node joins the lookups' stream itself (ORT, CUDA provider)
        others = list(cat.input[1:])
        at = int(_attr(cat, "position", 0))
        parts = others[:at] + [cat.input[0]] + others[at:]
        remove.append(cat)
    widths = _float_widths(model, parts)
    if widths is None or any(w % m["dim"] for w in widths) or sum(widths) != m["n"] * m["dim"]:
        return False
    out = m["gather"].output[0]
    prefix = -1
    last = g.single(out, "Concat")
    if (last is not None and _attr(last, "axis") in (1, -1) and len(last.input) == 2 and last.input[1] == out
            and last.input[0] in parts):
        prefix = parts.index(last.input[0])
        out = last.output[0]
        remove.append(last)
    node = helper.make_node(OP_TYPE, parts, [out], name=m["gather"].name + "_interaction", domain=C.DOMAIN,
                            dim=m["dim"], pairs=[int(p) for p in m["pairs"]], prefix=prefix)
    nodes = list(model.graph.node)
    at = max(nodes.index(n) for n in remove)
    nodes.insert(at + 1, node)
    ids = {id(n) for n in remove}
    kept = [n for n in nodes if id(n) not in ids]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {x for n in kept for x in n.input} | {o.name for o in model.graph.output}
    dead = {x for n in remove for x in n.input if x in g.inits and x not in used}  # e.g. reshape shapes, pairs
    for t in [t for t in model.graph.initializer if t.name in dead]:
        model.graph.initializer.remove(t)
    if not any(o.domain == C.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(C.DOMAIN, int(C.OP_VERSION)))
    return True


def unfuse_interaction(model: onnx.ModelProto) -> int:
    """The inverse of fuse_interaction, in place: every DotInteraction node back into standard ops
    (Concat, Reshape, Transpose, MatMul, Reshape, Gather, Concat) for runtimes without our op library
    (TensorRT). Returns how many were expanded."""
    nodes, done = [], 0
    for node in model.graph.node:
        if node.op_type != OP_TYPE or node.domain != C.DOMAIN:
            nodes.append(node)
            continue
        done += 1
        base = (node.name or node.output[0]) + "_unfused"
        dim, pairs, prefix = int(_attr(node, "dim")), list(_attr(node, "pairs", [])), int(_attr(node, "prefix", -1))
        consts = {f"{base}_view": [0, -1, dim], f"{base}_flat": [0, -1], f"{base}_pairs": pairs}
        for name, values in consts.items():
            model.graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        parts = list(node.input)
        src = parts[0]
        if len(parts) > 1:
            nodes.append(helper.make_node("Concat", parts, [f"{base}_cat"], name=f"{base}_cat", axis=1))
            src = f"{base}_cat"
        gathered = node.output[0] if prefix < 0 else f"{base}_dots"
        nodes += [helper.make_node("Reshape", [src, f"{base}_view"], [f"{base}_v"], name=f"{base}_reshape"),
                  helper.make_node("Transpose", [f"{base}_v"], [f"{base}_vt"], name=f"{base}_transpose", perm=[0, 2, 1]),
                  helper.make_node("MatMul", [f"{base}_v", f"{base}_vt"], [f"{base}_z"], name=f"{base}_matmul"),
                  helper.make_node("Reshape", [f"{base}_z", f"{base}_flat"], [f"{base}_zf"], name=f"{base}_flatten"),
                  helper.make_node("Gather", [f"{base}_zf", f"{base}_pairs"], [gathered], name=f"{base}_gather", axis=1)]
        if prefix >= 0:
            nodes.append(helper.make_node("Concat", [parts[prefix], gathered], [node.output[0]], name=f"{base}_out",
                                          axis=1))
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done
