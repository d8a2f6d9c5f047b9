"""Queries over an ONNX graph that the export passes share: value types, the op's nodes and
attributes, dependency order, and the op outputs' value_info."""

from __future__ import annotations

import onnx
from onnx import helper

from dlrm_deploy import contract as C


def value_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """{value name: type} of the graph's inputs, value_info, outputs and initializers."""
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


def attrs_of(node: onnx.NodeProto) -> dict:
    """An op node's attributes as Python values, validated, with the contract's defaults filled in."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else (list(v) if a.type == onnx.AttributeProto.INTS else v)
    return C.validate_attributes(out)


def topo_sort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
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


def ancestors(nodes: list[onnx.NodeProto], targets: list[int]) -> dict[int, set[int]]:
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



def is_op(node: onnx.NodeProto) -> bool:
    """Whether node is a dlrm_deploy::EmbeddingBag node."""
    return node.domain == C.DOMAIN and node.op_type == C.OP_TYPE


def op_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The model's dlrm_deploy::EmbeddingBag nodes, in graph order."""
    return [n for n in model.graph.node if is_op(n)]


def batch_symbol(model: onnx.ModelProto) -> str | None:
    """The symbolic first dimension of the first graph input (the batch in DLRM-like models)."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            return dims[0].dim_param
    return None


def annotate_outputs(model: onnx.ModelProto) -> None:
    """value_info for every op output: [B, T*D] with B the batch symbol where one is known."""
    graph = model.graph
    known = {v.name for v in graph.value_info} | {v.name for v in graph.output}
    for n in op_nodes(model):
        a = attrs_of(n)  # every node through the core's validator, the fused ones included
        if n.output[0] in known:
            continue
        elem = C.DTYPE_INFO[a["out_dtype"]].onnx
        graph.value_info.append(helper.make_tensor_value_info(
            n.output[0], elem, [batch_symbol(model), len(a["table_rows"]) * a["dim"]]))

