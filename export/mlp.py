"""ONNX graph pass ``fuse_mlp``: chains of Linear layers as one ``dlrm_deploy::Mlp``.

Every nn.Linear of DLRM's bottom and top MLPs exports as ``Gemm(x, W, b, transB=1)``, most followed
by ``Relu`` (the top MLP's last by ``Sigmoid``). ONNX Runtime's CUDA provider runs each layer as
three kernels (the bias broadcast into the output, the GEMM accumulating onto it, the activation);
at DLRM's batch sizes the widths are small and the launches and round trips through global memory
dominate. The pass replaces every maximal chain of such layers, each one's output used only by the
next one's Gemm, by one node ``Mlp(X, W_1, b_1, ..., W_L, b_L)`` with the layers' activations,
computed by one kernel. The node's output keeps the chain's last output name.

Fusable layer: a float32 Gemm with transA=0, alpha=1, beta=1, B an initializer (transB=0 is stored
transposed), C absent or a float32 initializer of shape [N] or [1, N], every width at most
``MLP_MAX_WIDTH``, optionally followed by a Relu or Sigmoid as the Gemm output's only consumer.
A chain longer than ``MLP_MAX_LAYERS`` becomes several nodes.
Runs in ONNX Runtime (CPU and CUDA providers) with our op library; TensorRT has no plugin for it,
so ``trt-build`` expands it back (``unfuse_mlp``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dlrm_deploy import contract as C

OP_TYPE = C.MLP_OP_TYPE
ACTIVATIONS = C.MLP_ACTIVATIONS
_ACT_OPS = {"Relu": ACTIVATIONS["relu"], "Sigmoid": ACTIVATIONS["sigmoid"]}
_ACT_NAMES = {v: k for k, v in _ACT_OPS.items()}


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _standard(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _subgraph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names read by the nodes of graph's subgraphs (If/Loop/Scan bodies), outer-scope values included."""
    refs: set[str] = set()
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                refs |= {x for sn in sub.node for x in sn.input} | {o.name for o in sub.output} | _subgraph_refs(sub)
    return refs


class _Layer:
    """One fusable Gemm (+ activation): its nodes, weight/bias sources and output name."""

    def __init__(self, gemm, act, weight, bias, n: int, k: int):
        self.gemm, self.act = gemm, act
        self.weight, self.bias = weight, bias  # (initializer name, transpose/reshape needed) or None
        self.n, self.k = n, k
        self.nodes = [gemm] + ([act] if act is not None else [])
        self.output = (act or gemm).output[0]
        self.code = _ACT_OPS[act.op_type] if act is not None else ACTIVATIONS["none"]


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for x in n.input:
                self.consumers.setdefault(x, []).append(n)
        self.outputs = {o.name for o in graph.output} | _subgraph_refs(graph)  # values used beyond the nodes
        self.graph_inputs = {i.name for i in graph.input}  # initializers listed as inputs can be overridden
        self.inits = {t.name: t for t in graph.initializer}

    def init(self, name: str) -> onnx.TensorProto | None:
        t = self.inits.get(name)
        if t is None or name in self.graph_inputs or t.data_type != onnx.TensorProto.FLOAT:
            return None
        return t

    def sole_user(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def layer(self, gemm: onnx.NodeProto) -> _Layer | None:
        """gemm as a fusable layer (module docstring), or None."""
        if not _standard(gemm, "Gemm") or len(gemm.input) < 2 or len(gemm.output) != 1:
            return None
        if (_attr(gemm, "transA", 0) != 0 or float(_attr(gemm, "alpha", 1.0)) != 1.0
                or float(_attr(gemm, "beta", 1.0)) != 1.0):
            return None
        trans_b = int(_attr(gemm, "transB", 0))
        w = self.init(gemm.input[1])
        if w is None or len(w.dims) != 2 or trans_b not in (0, 1):
            return None
        if not trans_b and w.data_location == onnx.TensorProto.EXTERNAL:
            return None  # the transposed copy needs the values
        n, k = (w.dims[0], w.dims[1]) if trans_b else (w.dims[1], w.dims[0])
        if not (1 <= n <= C.MLP_MAX_WIDTH and 1 <= k <= C.MLP_MAX_WIDTH):
            return None
        bias = None
        if len(gemm.input) > 2 and gemm.input[2]:
            b = self.init(gemm.input[2])
            if b is None or list(b.dims) not in ([n], [1, n]):
                return None
            bias = (b.name, len(b.dims) == 2)
        act = self.sole_user(gemm.output[0])
        if act is not None and not any(_standard(act, op) for op in _ACT_OPS):
            act = None
        return _Layer(gemm, act, (w.name, not trans_b), bias, n, k)


def _chains(g: _Graph) -> list[list[_Layer]]:
    """Every maximal chain of fusable layers, in graph order of their first Gemm."""
    layers = {id(n): lay for n in g.graph.node if (lay := g.layer(n)) is not None}
    follower: dict[int, _Layer] = {}
    for key, lay in layers.items():
        user = g.sole_user(lay.output)
        nxt = layers.get(id(user)) if user is not None else None
        if nxt is not None and nxt is not lay and list(nxt.gemm.input).count(lay.output) == 1 \
                and nxt.gemm.input[0] == lay.output and nxt.k == lay.n:
            follower[key] = nxt
    followed = {id(f.gemm) for f in follower.values()}
    chains = []
    for n in g.graph.node:
        if id(n) not in layers or id(n) in followed:
            continue
        chain = [layers[id(n)]]
        while id(chain[-1].gemm) in follower:
            chain.append(follower[id(chain[-1].gemm)])
        chains.append(chain)
    return chains


def _fresh(names: set[str], want: str) -> str:
    name, k = want, 1
    while name in names:
        name, k = f"{want}_{k}", k + 1
    names.add(name)
    return name


def fuse_mlp(model: onnx.ModelProto) -> int:
    """Replaces every maximal chain of fusable Gemm (+ Relu/Sigmoid) layers (module docstring) by one
    Mlp node (several beyond MLP_MAX_LAYERS layers), in place. Returns how many Mlp nodes were made."""
    g = _Graph(model.graph)
    step = C.MLP_MAX_LAYERS
    chains = [c[i:i + step] for c in _chains(g) for i in range(0, len(c), step)]
    if not chains:
        return 0
    names = set(g.inits) | {x for n in model.graph.node for x in list(n.input) + list(n.output)} \
        | g.graph_inputs | g.outputs
    new_inits: list[onnx.TensorProto] = []
    replaced: dict[int, onnx.NodeProto | None] = {}  # node id -> the Mlp node in its place (at the chain's end)
    removed_inputs: set[str] = set()
    for chain in chains:
        base = chain[0].gemm.name or chain[0].gemm.output[0]
        inputs = [chain[0].gemm.input[0]]
        for i, lay in enumerate(chain, 1):
            w_name, transpose = lay.weight
            if transpose:
                w = numpy_helper.to_array(g.inits[w_name]).T
                w_name = _fresh(names, f"{base}_mlp_w{i}")
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), w_name))
            if lay.bias is None:
                b_name = _fresh(names, f"{base}_mlp_b{i}")
                new_inits.append(numpy_helper.from_array(np.zeros(lay.n, np.float32), b_name))
            else:
                b_name, flatten = lay.bias
                if flatten:
                    t = onnx.TensorProto()
                    t.CopyFrom(g.inits[b_name])
                    t.name = b_name = _fresh(names, f"{base}_mlp_b{i}")
                    del t.dims[:]
                    t.dims.append(lay.n)
                    new_inits.append(t)
            inputs += [w_name, b_name]
            removed_inputs.update(x for nd in lay.nodes for x in nd.input)
        node = helper.make_node(OP_TYPE, inputs, [chain[-1].output], name=_fresh(names, f"{base}_mlp"),
                                domain=C.DOMAIN, activations=[lay.code for lay in chain])
        for lay in chain:
            for nd in lay.nodes:
                replaced[id(nd)] = None
        replaced[id(chain[-1].nodes[-1])] = node
    kept = []
    for n in model.graph.node:
        if id(n) not in replaced:
            kept.append(n)
        elif replaced[id(n)] is not None:
            kept.append(replaced[id(n)])
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_inits)
    used = {x for n in kept for x in n.input} | g.outputs
    for t in [t for t in model.graph.initializer if t.name in removed_inputs and t.name not in used]:
        model.graph.initializer.remove(t)
    if not any(o.domain == C.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(C.DOMAIN, int(C.OP_VERSION)))
    return len(chains)


def unfuse_mlp(model: onnx.ModelProto) -> int:
    """The inverse of fuse_mlp, in place: every Mlp node back into Gemm(transB=1) and Relu/Sigmoid
    per layer, for runtimes without our op library (TensorRT). Returns how many were expanded."""
    nodes, done = [], 0
    names = {x for n in model.graph.node for x in list(n.input) + list(n.output)} \
        | {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type != OP_TYPE or node.domain != C.DOMAIN:
            nodes.append(node)
            continue
        codes = [int(c) for c in _attr(node, "activations", [])]
        if len(node.input) != 1 + 2 * len(codes) or not codes:
            raise ValueError(f"{C.DOMAIN}::{OP_TYPE} node '{node.name}': {len(node.input)} inputs for "
                             f"{len(codes)} activations (want 1 + 2 per layer)")
        bad = [c for c in codes if c != ACTIVATIONS["none"] and c not in _ACT_NAMES]
        if bad:
            raise ValueError(f"{C.DOMAIN}::{OP_TYPE} node '{node.name}': unknown activation code {bad[0]}")
        done += 1
        base = (node.name or node.output[0]) + "_unfused"
        x = node.input[0]
        for i, code in enumerate(codes, 1):
            last = i == len(codes)
            out = node.output[0] if last and code == ACTIVATIONS["none"] else _fresh(names, f"{base}_linear{i}")
            nodes.append(helper.make_node("Gemm", [x, node.input[2 * i - 1], node.input[2 * i]], [out],
                                          name=f"{base}_gemm{i}", alpha=1.0, beta=1.0, transA=0, transB=1))
            if code != ACTIVATIONS["none"]:
                act_out = node.output[0] if last else _fresh(names, f"{base}_act{i}")
                nodes.append(helper.make_node(_ACT_NAMES[code], [out], [act_out], name=f"{base}_act{i}"))
                out = act_out
            x = out
    if done:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done
