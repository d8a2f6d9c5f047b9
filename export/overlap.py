"""ONNX graph pass for ``overlap``: the embedding lookups run beside the dense layers.

An EmbeddingBag node whose lookups are graph inputs (and tables initializers) and whose output
feeds exactly one Concat along axis 1 (DLRM concatenates the bottom MLP's output with the pooled
tables) gets ``overlap=1``, and that Concat becomes ``dlrm_deploy::Join``: on ONNX Runtime's CUDA
provider the lookups then run on the op's own stream, concurrently with whatever the graph computes
before the Join (the bottom MLP), and Join joins the streams, reports bad input (check=checked) and
concatenates. An EmbeddingBag whose output feeds a fused ``DotInteraction`` (export/interaction.py)
is marked the same way without a Join: that node joins the op's stream itself.

The EmbeddingBag node is moved just before its Join (or interaction): ONNX Runtime's default order
visits the later-defined input of a node first, so the op runs before the other branch and its
stream forks before the bottom MLP. Where that other input is a fused ``dlrm_deploy::Mlp`` (the
bottom MLP), the MLP gets ``beside=1`` (its kernel holds a quarter of the SMs, each block looping
over groups of rows) and the op ``overlap=2``: the lookups are launched by the joining node, after
the MLP, so that the MLP's blocks take their few SMs first and the lookups' blocks fill the rest.
(A full-grid MLP launched first holds every SM while the lookups start; launched after the
lookups, any MLP waits for their tail: either way it barely overlaps.) Otherwise ``overlap=1``: the
lookups are launched at once, before the other branch. ONNX Runtime only (TensorRT has no Join
plugin); other providers run it inline.
"""

from __future__ import annotations

import onnx
from onnx import helper

from dlrm_deploy import contract as C


def _concat_axis(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def _mark(op: onnx.NodeProto, name: str, value: int = 1) -> None:
    for a in op.attribute:
        if a.name == name:
            a.i = value
            return
    op.attribute.append(helper.make_attribute(name, value))


def _place(graph: onnx.GraphProto, op: onnx.NodeProto, user: onnx.NodeProto, others: list[str]) -> None:
    """Marks every fused Mlp that produces one of `others` beside=1 and op overlap=2 (overlap=1 when
    there is none), and moves op just before `user`."""
    # (by value: rewriting graph.node copies its messages, so an earlier pass's objects are not these)
    nodes = [n for n in graph.node if n != op]
    beside = [n for n in nodes if n.domain == C.DOMAIN and n.op_type == C.MLP_OP_TYPE and n.output[0] in others]
    for mlp in beside:
        _mark(mlp, "beside")
    nodes.insert(next(i for i, n in enumerate(nodes) if n == user), op)
    _mark(op, "overlap", 2 if beside else 1)
    del graph.node[:]
    graph.node.extend(nodes)


def apply_overlap(model: onnx.ModelProto) -> int:
    """Marks every eligible EmbeddingBag node overlap=1 and replaces its Concat with a Join (in
    place). Returns how many nodes were marked."""
    graph = model.graph
    graph_inputs = {v.name for v in graph.input}
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    marked = 0
    for op in [n for n in graph.node if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]:
        out = op.output[0]
        users = consumers.get(out, [])
        if (op.input[0] not in inits or any(x and x not in graph_inputs for x in op.input[1:]) or out in outputs
                or len(users) != 1):
            continue
        cat = users[0]
        if cat.domain == C.DOMAIN and cat.op_type == C.INTERACTION_OP_TYPE:  # a fused interaction joins itself
            _place(graph, op, cat, [x for x in cat.input if x != out])
            marked += 1
            continue
        others = [x for x in cat.input if x != out]
        if (cat.op_type != "Concat" or cat.domain not in ("", "ai.onnx") or _concat_axis(cat) not in (1, -1)
                or list(cat.input).count(out) != 1 or not others):
            continue
        join = helper.make_node(C.JOIN_OP_TYPE, [out] + others, list(cat.output), name=(cat.name or out) + "_join",
                                domain=C.DOMAIN, axis=1, position=list(cat.input).index(out))
        nodes = list(graph.node)
        nodes[next(i for i, n in enumerate(nodes) if n == cat)] = join
        del graph.node[:]
        graph.node.extend(nodes)
        _place(graph, op, join, others)
        marked += 1
    return marked
