"""dlrm_deploy::Mlp and the fuse_mlp pass: DLRM's bottom and top MLPs become one node each, the
pass handles transB=0, bias-less and [1, N]-bias Gemms and leaves what it cannot fuse alone,
unfuse_mlp gives back standard ops with the same outputs; the op (through our ONNX Runtime library)
computes what numpy computes for random chains, whole fused DLRMs match the unfused file and
PyTorch, bad inputs fail with the op's message. CPU provider everywhere; the CUDA provider (plain
and in a CUDA graph) on a GPU."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C
from dlrm_deploy.export.dlrm import make_inputs
from dlrm_deploy.export.mlp import OP_TYPE, fuse_mlp, unfuse_mlp
from dlrm_deploy.export.onnx_schema import register_onnx_schema
from dlrm_deploy.runtime import ort as dd_ort
from dlrm_deploy.runtime.accuracy import onnx_feeds

import fused_dlrm

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")])
DEVICES = ["cpu", CUDA]
ACT = C.MLP_ACTIVATIONS
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, C.OP_VERSION)]


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, ir_version=10, opset_imports=OPSETS)  # onnxruntime 1.31 reads IR <= 13


def _attr(node, name):
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == name))


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


# ------------------------------------------------------------------------------------------------
# The pass on hand-built Gemm chains (standard ops only: no op library needed)


def _gemm_chain(layers, k0=13, seed=0, x_name="x"):
    """A graph of Gemm layers: each a dict with n (output width) and optional act ("Relu",
    "Sigmoid"), trans_b (default 1), bias ("n", "1n", None; default "n"), alpha, weight_input (the
    weight as a graph input). Returns (model, feeds of batch 5)."""
    rng = np.random.default_rng(seed)
    nodes, inits, inputs, feeds = [], [], [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, ["B", k0])], {}
    feeds[x_name] = rng.standard_normal((5, k0)).astype(np.float32)
    x, k = x_name, k0
    for i, lay in enumerate(layers):
        n, trans_b = lay["n"], lay.get("trans_b", 1)
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        w = w if trans_b else np.ascontiguousarray(w.T)
        ins = [x, f"w{i}"]
        if lay.get("weight_input"):
            inputs.append(helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT, list(w.shape)))
            feeds[f"w{i}"] = w
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        bias = lay.get("bias", "n")
        if bias is not None:
            b = rng.standard_normal(n).astype(np.float32)
            inits.append(numpy_helper.from_array(b.reshape(1, n) if bias == "1n" else b, f"b{i}"))
            ins.append(f"b{i}")
        attrs = dict(transB=trans_b)
        if "alpha" in lay:
            attrs["alpha"] = lay["alpha"]
        nodes.append(helper.make_node("Gemm", ins, [f"g{i}"], name=f"gemm{i}", **attrs))
        x = f"g{i}"
        if lay.get("act"):
            nodes.append(helper.make_node(lay["act"], [x], [f"a{i}"], name=f"act{i}"))
            x = f"a{i}"
        k = n
    out = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", k])
    return _model(nodes, inputs, [out], inits), feeds


def _run_standard(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _numpy_mlp(x, weights, biases, codes):
    """The op's definition in float64."""
    y = x.astype(np.float64)
    for w, b, c in zip(weights, biases, codes):
        y = y @ w.astype(np.float64).T + b.astype(np.float64)
        if c == ACT["relu"]:
            y = np.maximum(y, 0)
        elif c == ACT["sigmoid"]:
            y = 1 / (1 + np.exp(-y))
    return y


def _numpy_of_node(proto, node, x):
    """What the fused node computes, from its initializers."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    ins = list(node.input)
    return _numpy_mlp(x, [inits[w] for w in ins[1::2]], [inits[b] for b in ins[2::2]], _attr(node, "activations"))


def _check_fused_and_unfused(layers, want_nodes, want_codes, k0=13):
    """Fuses the chain graph, checks the Mlp nodes, their numpy value and the unfused graph against
    the original graph in ORT."""
    proto, feeds = _gemm_chain(layers, k0=k0)
    ref = _run_standard(proto, feeds)[0]
    register_onnx_schema()
    assert fuse_mlp(proto) == want_nodes
    onnx.checker.check_model(proto, full_check=True)
    mlps = [n for n in proto.graph.node if n.op_type == OP_TYPE]
    assert [list(_attr(n, "activations")) for n in mlps] == want_codes
    for t in proto.graph.initializer:
        assert t.name in {x for n in proto.graph.node for x in n.input}  # no dead initializers
    if len(proto.graph.node) == 1:
        np.testing.assert_allclose(_numpy_of_node(proto, mlps[0], feeds["x"]), ref, rtol=1e-5, atol=1e-5)
    assert unfuse_mlp(proto) == want_nodes
    assert OP_TYPE not in _ops(proto)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(_run_standard(proto, feeds)[0], ref, rtol=1e-5, atol=1e-6)
    return proto


def test_plain_chain_with_every_activation():
    layers = [dict(n=32, act="Relu"), dict(n=7), dict(n=16, act="Sigmoid"), dict(n=1, act="Relu")]
    _check_fused_and_unfused(layers, 1, [[ACT["relu"], ACT["none"], ACT["sigmoid"], ACT["relu"]]])


def test_trans_b_0_bias_less_and_row_bias_gemms_are_fused():
    layers = [dict(n=9, act="Relu", trans_b=0), dict(n=4, bias=None, act="Sigmoid"), dict(n=3, bias="1n"),
              dict(n=2, trans_b=0, bias=None)]
    proto, _ = _gemm_chain(layers)
    assert fuse_mlp(proto) == 1
    node, = proto.graph.node
    inits = {t.name: t for t in proto.graph.initializer}
    shapes = [list(inits[x].dims) for x in node.input[1:]]
    assert shapes == [[9, 13], [9], [4, 9], [4], [3, 4], [3], [2, 3], [2]]
    assert not {"w0", "w3", "b2"} & set(inits)  # replaced by the transposed / flattened copies
    assert not numpy_helper.to_array(inits[node.input[4]]).any()  # the absent bias: zeros
    _check_fused_and_unfused(layers, 1, [[ACT["relu"], ACT["sigmoid"], ACT["none"], ACT["none"]]])


def test_unfusable_layers_split_chains():
    """alpha != 1 and a weight that is not an initializer stay Gemm nodes; the layers around them
    become separate Mlp nodes."""
    layers = [dict(n=8, act="Relu"), dict(n=8, act="Relu", alpha=2.0), dict(n=6, act="Relu"), dict(n=5),
              dict(n=4, weight_input=True), dict(n=3, act="Sigmoid")]
    proto, feeds = _gemm_chain(layers)
    ref = _run_standard(proto, feeds)[0]
    assert fuse_mlp(proto) == 3
    assert _ops(proto) == [OP_TYPE, "Gemm", "Relu", OP_TYPE, "Gemm", OP_TYPE]
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert [g.name for g in gemms] == ["gemm1", "gemm4"]
    assert [list(_attr(n, "activations")) for n in proto.graph.node if n.op_type == OP_TYPE] == [
        [ACT["relu"]], [ACT["relu"], ACT["none"]], [ACT["sigmoid"]]]
    assert unfuse_mlp(proto) == 3
    np.testing.assert_allclose(_run_standard(proto, feeds)[0], ref, rtol=1e-5, atol=1e-6)


def test_only_unfusable_gemms_are_left_alone():
    for layers in ([dict(n=8, act="Relu", alpha=0.5)], [dict(n=8, weight_input=True)], [dict(n=8, act="Relu")]):
        proto, _ = _gemm_chain(layers)
        if "alpha" not in layers[0] and not layers[0].get("weight_input"):
            proto.graph.node[0].attribute.append(helper.make_attribute("transA", 1))  # [B, K] as transA: invalid
        before = proto.SerializeToString()
        assert fuse_mlp(proto) == 0
        assert proto.SerializeToString() == before


def test_bias_of_another_shape_is_not_fused():
    proto, _ = _gemm_chain([dict(n=8, act="Relu")])
    b = next(t for t in proto.graph.initializer if t.name == "b0")
    b.CopyFrom(numpy_helper.from_array(np.ones((8, 1), np.float32), "b0"))
    before = proto.SerializeToString()
    assert fuse_mlp(proto) == 0
    assert proto.SerializeToString() == before


def test_shared_or_graph_output_values_end_a_chain():
    """A layer whose output is a graph output, or read by two nodes, ends its chain; a Gemm output
    read by its Relu and by another node keeps the Relu outside (activation none)."""
    proto, feeds = _gemm_chain([dict(n=8, act="Relu"), dict(n=6, act="Relu"), dict(n=4), dict(n=3, act="Relu")])
    g = proto.graph
    g.output.append(helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["B", 8]))  # layer 0 also an output
    g.node.append(helper.make_node("Neg", ["g2"], ["neg"], name="neg"))  # layer 2's Gemm output read twice
    g.output.append(helper.make_tensor_value_info("neg", TensorProto.FLOAT, ["B", 4]))
    ref = _run_standard(proto, feeds)
    assert fuse_mlp(proto) == 3
    mlps = [n for n in g.node if n.op_type == OP_TYPE]
    assert [list(_attr(n, "activations")) for n in mlps] == [[ACT["relu"]], [ACT["relu"], ACT["none"]],
                                                              [ACT["relu"]]]
    assert [n.output[0] for n in mlps] == ["a0", "g2", "a3"]
    for got, want in zip(_run_standard(_unfused(proto), feeds), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _unfused(proto):
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    unfuse_mlp(copy)
    return copy


def test_wider_than_the_limit_is_not_fused():
    wide = C.MLP_MAX_WIDTH + 1
    proto, _ = _gemm_chain([dict(n=32, act="Relu"), dict(n=wide, act="Relu"), dict(n=8)])
    assert fuse_mlp(proto) == 1
    assert _ops(proto) == [OP_TYPE, "Gemm", "Relu", "Gemm"]
    assert list(proto.graph.node[0].output) == ["a0"]
    proto, _ = _gemm_chain([dict(n=8, act="Relu")], k0=wide)
    assert fuse_mlp(proto) == 0
    proto, _ = _gemm_chain([dict(n=C.MLP_MAX_WIDTH, act="Relu"), dict(n=2)], k0=C.MLP_MAX_WIDTH)
    assert fuse_mlp(proto) == 1  # the limit itself is fine


def test_chains_longer_than_the_layer_limit_become_several_nodes():
    limit = C.MLP_MAX_LAYERS
    layers = [dict(n=6, act="Relu") for _ in range(2 * limit + 1)]
    proto, feeds = _gemm_chain(layers)
    ref = _run_standard(proto, feeds)[0]
    assert fuse_mlp(proto) == 3
    assert [len(_attr(n, "activations")) for n in proto.graph.node] == [limit, limit, 1]
    assert proto.graph.node[1].input[0] == proto.graph.node[0].output[0]
    np.testing.assert_allclose(_run_standard(_unfused(proto), feeds)[0], ref, rtol=1e-5, atol=1e-6)


def test_graph_without_gemm_is_left_alone():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    proto = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y])
    before = proto.SerializeToString()
    assert fuse_mlp(proto) == 0 and unfuse_mlp(proto) == 0
    assert proto.SerializeToString() == before


def test_shape_inference_of_the_node():
    register_onnx_schema()
    proto, _ = _gemm_chain([dict(n=32, act="Relu"), dict(n=7, act="Sigmoid")])
    assert fuse_mlp(proto) == 1
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("a1", TensorProto.FLOAT, None))
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["B", 7]


# ------------------------------------------------------------------------------------------------
# Whole DLRM exports


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    return fused_dlrm.small_files(tmp_path_factory, "mlp", fuse_mlp, 2, "fuse_mlp")


def test_bottom_and_top_mlps_become_one_node_each(small_files):
    cfg, _model, _plain, fused, proto = small_files
    mlps = [n for n in proto.graph.node if n.op_type == OP_TYPE]
    assert len(mlps) == 2 and all(n.domain == C.DOMAIN for n in mlps)
    for gone in ("Gemm", "Relu", "Sigmoid"):
        assert gone not in _ops(proto), _ops(proto)
    bottom, top = mlps
    assert list(_attr(bottom, "activations")) == [ACT["relu"]] * len(cfg.bottom_mlp)
    assert list(_attr(top, "activations")) == [ACT["relu"]] * (len(cfg.top_mlp) - 1) + [ACT["sigmoid"]]
    assert bottom.input[0] == "dense" and len(bottom.input) == 1 + 2 * len(cfg.bottom_mlp)
    assert top.output[0] == proto.graph.output[0].name
    used = {x for nd in proto.graph.node for x in nd.input}
    assert all(t.name in used for t in proto.graph.initializer)
    register_onnx_schema()
    onnx.checker.check_model(str(fused), full_check=True)
    assert fuse_mlp(proto) == 0  # nothing left to fuse


def test_unfuse_restores_gemm_relu_sigmoid(small_files, tmp_path):
    """trt-build's expansion: Gemm, Relu and Sigmoid again, the same outputs as the plain file and
    PyTorch (the file still has our EmbeddingBag and DotInteraction: run with our library)."""
    cfg, model, plain, fused, _ = small_files
    proto = onnx.load(str(fused))
    assert unfuse_mlp(proto) == 2
    ops = _ops(proto)
    assert OP_TYPE not in ops
    assert ops.count("Gemm") == len(cfg.bottom_mlp) + len(cfg.top_mlp)
    assert ops.count("Relu") == len(cfg.bottom_mlp) + len(cfg.top_mlp) - 1 and ops.count("Sigmoid") == 1
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "unfused.onnx"
    onnx.save(proto, str(path))
    a, b = dd_ort.ort_session(plain, device="cpu"), dd_ort.ort_session(path, device="cpu")
    for batch, seed in ((1, 1), (33, 8)):
        inputs = make_inputs(cfg, batch, seed=seed)
        feeds = onnx_feeds(a.input_names, *inputs)
        with torch.no_grad():
            ref = model(*inputs).numpy()
        got = b.run(feeds)[0]
        np.testing.assert_allclose(got, a.run(feeds)[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_trt_model_has_no_mlp_node(small_files):
    from dlrm_deploy.runtime.trt import trt_onnx_model

    *_, fused, _ = small_files
    proto, _retyped = trt_onnx_model(fused)
    assert {n.op_type for n in proto.graph.node if n.domain == C.DOMAIN} == {C.OP_TYPE}


def test_export_cli_fuses_by_default(tmp_path):
    for extra, want in (([], 2), (["--no-fuse-mlp"], 0)):
        ops = fused_dlrm.cli_export_ops(tmp_path, *extra)
        assert ops.count(OP_TYPE) == want
        assert ops.count("Gemm") == (0 if want else 5)


# ------------------------------------------------------------------------------------------------
# The op in our ONNX Runtime library


def _one_node(widths, codes, batch, rng, weights_as_inputs=False, x_dims=None, beside=None):
    """A single Mlp node with random weights: widths = [K0, N_1, ..., N_L] (beside: that attribute's
    value, or none). Returns (model bytes, feeds, weights, biases)."""
    x_dims = x_dims or ["B", widths[0]]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)]
    feeds = {"x": rng.standard_normal((batch, *[d for d in x_dims[1:]])).astype(np.float32)}
    inits, names, weights, biases = [], ["x"], [], []
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:]), 1):
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = (0.5 * rng.standard_normal(n)).astype(np.float32)
        weights.append(w)
        biases.append(b)
        for name, v in ((f"w{i}", w), (f"b{i}", b)):
            names.append(name)
            if weights_as_inputs:
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)))
                feeds[name] = v
            else:
                inits.append(numpy_helper.from_array(v, name))
    node = helper.make_node(OP_TYPE, names, ["y"], name="mlp0", domain=C.DOMAIN, activations=list(codes))
    if beside is not None:
        node.attribute.append(helper.make_attribute("beside", beside))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model([node], inputs, [out], inits).SerializeToString(), feeds, weights, biases


def _assert_close(got, want):
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beside", [None, 1])
@pytest.mark.parametrize("seed", range(10))
def test_random_chains_match_numpy(device, seed, beside):
    """beside=1: on CUDA a few blocks loop over the groups of rows where the batch is large enough (on
    an H100 5000 rows: 34 blocks of nine or ten groups), the usual grid below (545 rows)."""
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 5))
    picks = [1, 13, 206, 300] + [int(v) for v in rng.integers(1, 301, size=4)]
    widths = [int(rng.choice(picks)) for _ in range(layers + 1)]
    codes = [int(rng.choice(list(ACT.values()))) for _ in range(layers)]
    batch = int(rng.choice([0, 1, 7, 300] + ([17, 545, 5000] if beside else [])))
    model, feeds, weights, biases = _one_node(widths, codes, batch, rng, weights_as_inputs=seed % 3 == 2,
                                              beside=beside)
    sess = dd_ort.ort_session(model, device=device)
    for _ in range(2):  # a second run with fresh X (the node's state carries over)
        got = sess.run(feeds)[0]
        _assert_close(got, _numpy_mlp(feeds["x"], weights, biases, codes))
        feeds["x"] = rng.standard_normal(feeds["x"].shape).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("widths,codes", [
    ([256, 128, 128], [ACT["relu"], ACT["relu"]]),
    ([206, 128, 64, 1], [ACT["relu"], ACT["relu"], ACT["sigmoid"]]),
    ([C.MLP_MAX_WIDTH, 8, C.MLP_MAX_WIDTH], [ACT["none"], ACT["relu"]]),
    ([64] + [33] * C.MLP_MAX_LAYERS, [ACT["relu"]] * (C.MLP_MAX_LAYERS - 1) + [ACT["sigmoid"]]),
])
@pytest.mark.parametrize("beside", [0, 1])
def test_paper_like_mlps_at_batch_2048(device, widths, codes, beside):
    rng = np.random.default_rng(len(widths))
    model, feeds, weights, biases = _one_node(widths, codes, 2048, rng, beside=beside)
    got = dd_ort.ort_session(model, device=device).run(feeds)[0]
    _assert_close(got, _numpy_mlp(feeds["x"], weights, biases, codes))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graph", [False, True])
def test_weights_computed_in_the_graph_are_read_after_their_kernel(device, graph):
    """A second Mlp whose weight is the first one's output, written by the kernel just before it. On
    CUDA only initializers may be copied before the kernel ahead finishes (programmatic dependent
    launch); this weight must be read after it, so every run (fresh inputs each time, also replayed
    from a CUDA graph) matches numpy, never a previous run's weight."""
    if graph and device == "cpu":
        pytest.skip("CUDA graphs are a CUDA provider feature")
    rng = np.random.default_rng(5)
    n, k, k0, batch = 96, 72, 40, 2048
    wa = (rng.standard_normal((k, k0)) / np.sqrt(k0)).astype(np.float32)
    ba = (0.1 * rng.standard_normal(k)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(n)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("xa", TensorProto.FLOAT, [n, k0]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])]
    nodes = [helper.make_node(OP_TYPE, ["xa", "wa", "ba"], ["w2"], name="weights", domain=C.DOMAIN,
                              activations=[ACT["none"]]),
             helper.make_node(OP_TYPE, ["x", "w2", "b2"], ["y"], name="mlp", domain=C.DOMAIN,
                              activations=[ACT["relu"]])]
    inits = [numpy_helper.from_array(v, name) for name, v in (("wa", wa), ("ba", ba), ("b2", b2))]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = _model(nodes, inputs, [out], inits).SerializeToString()
    sess = dd_ort.ort_session(model, device=device, cuda_graph=graph)
    for _ in range(4):
        feeds = {"xa": rng.standard_normal((n, k0)).astype(np.float32),
                 "x": rng.standard_normal((batch, k)).astype(np.float32)}
        w2 = _numpy_mlp(feeds["xa"], [wa], [ba], [ACT["none"]])
        _assert_close(sess.run(feeds)[0], _numpy_mlp(feeds["x"], [w2], [b2], [ACT["relu"]]))


@pytest.mark.gpu
@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("x_is", ["graph input", "lookups' output"])
def test_mlp_right_after_the_lookups_reads_early_only_what_they_do_not_write(graph, x_is):
    """On the CUDA provider an Mlp right after an EmbeddingBag reads its X (and computes every layer
    but the last) while the lookups still run where X is not their output (a graph input: the bottom
    MLP's case), never where it is. Lookups long enough that an early read of their output would
    see a previous run's (200K rows x 128 fp32, batch 2048, 100 lookups a bag: 105 MB), fresh ids
    and X every run, plain and replayed from a CUDA graph: both match numpy."""
    rng = np.random.default_rng(11)
    rows, dim, batch, pooling = 200_000, 128, 2048, 100
    table = rng.standard_normal((rows, dim)).astype(np.float32)
    on_pooled = x_is == "lookups' output"
    widths = [dim if on_pooled else 64, 96, 32]
    weights = [(rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32) for k, n in zip(widths, widths[1:])]
    biases = [(0.5 * rng.standard_normal(n)).astype(np.float32) for n in widths[1:]]
    codes = [ACT["relu"], ACT["none"]]
    inits = [numpy_helper.from_array(table, "table")]
    names = ["pooled" if on_pooled else "x"]
    for i, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        names += [f"w{i}", f"b{i}"]
    nodes = [helper.make_node(C.OP_TYPE, ["table", "indices", "offsets"], ["pooled"], name="emb", domain=C.DOMAIN,
                              table_rows=[rows], dim=dim, dtype="fp32", mode="sum"),
             helper.make_node(OP_TYPE, names, ["y"], name="mlp", domain=C.DOMAIN, activations=codes)]
    inputs = [helper.make_tensor_value_info("indices", TensorProto.INT32, ["N"]),
              helper.make_tensor_value_info("offsets", TensorProto.INT32, ["B"])]
    if not on_pooled:
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", widths[0]]))
    outs = [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in ("y", "pooled")]
    sess = dd_ort.ort_session(_model(nodes, inputs, outs, inits).SerializeToString(), device="cuda",
                              cuda_graph=graph)
    offsets = (np.arange(batch) * pooling).astype(np.int32)
    for _ in range(4):
        ids = rng.integers(0, rows, size=batch * pooling).astype(np.int32)
        feeds = {"indices": ids, "offsets": offsets}
        if not on_pooled:
            feeds["x"] = rng.standard_normal((batch, widths[0])).astype(np.float32)
        y, pooled = sess.run(feeds)
        want_pooled = table[ids].reshape(batch, pooling, dim).sum(axis=1)
        np.testing.assert_allclose(pooled, want_pooled, rtol=1e-4, atol=1e-3)
        _assert_close(y, _numpy_mlp(want_pooled if on_pooled else feeds["x"], weights, biases, codes))


def test_cpu_generic_forward_matches_numpy():
    """The CPU forward's generic loop (CPUs without AVX2/FMA; DD_CPU_SIMD=0 selects it anywhere), in
    a process of its own: the choice is made once per process."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_mlp as t\n"
            "for seed in range(10): t.test_random_chains_match_numpy('cpu', seed, None)\n"
            "t.test_paper_like_mlps_at_batch_2048('cpu', [206, 128, 64, 1], [1, 1, 2], 0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent)], capture_output=True,
                       text=True, env={**os.environ, "DD_CPU_SIMD": "0"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
@pytest.mark.parametrize("cluster", ["1", "4"])
def test_cuda_weight_copies_per_cluster_size_match_numpy(cluster):
    """The CUDA kernel's weight copies shared by clusters of 1 (plain bulk copies) and 4 blocks (the
    default is 2), in a process of their own: DLRM_DEPLOY_MLP_CLUSTER is read once per process."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_mlp as t\n"
            "for seed in range(10):\n"
            "    for beside in (None, 1): t.test_random_chains_match_numpy('cuda', seed, beside)\n"
            "for beside in (0, 1):\n"
            "    t.test_paper_like_mlps_at_batch_2048('cuda', [256, 128, 128], [1, 1], beside)\n"
            "    t.test_paper_like_mlps_at_batch_2048('cuda', [206, 128, 64, 1], [1, 1, 2], beside)\n")
    r = subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent)], capture_output=True,
                       text=True, env={**os.environ, "DLRM_DEPLOY_MLP_CLUSTER": cluster}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _bad(device, widths, codes, reason, *, edit=None, x_dims=None, batch=3):
    """The single-node model fails (at session creation or run) with the op's message naming reason."""
    model, feeds, *_ = _one_node(widths, codes, batch, np.random.default_rng(0), x_dims=x_dims)
    if edit is not None:
        proto = onnx.load_from_string(model)
        edit(proto)
        model = proto.SerializeToString()
    with pytest.raises(Exception, match=rf"dlrm_deploy::Mlp \(node 'mlp0'\): .*{reason}"):
        dd_ort.ort_session(model, device=device).run(feeds)


def _replace_init(name, value):
    def edit(proto):
        t = next(t for t in proto.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return edit


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_fail_with_the_ops_message(device):
    relu = ACT["relu"]
    _bad(device, [5, 8, 4], [relu, relu], "weight", edit=_replace_init("w2", np.ones((4, 7))))  # K_2 = 7, N_1 = 8
    _bad(device, [5, 8, 4], [relu, relu], "bias", edit=_replace_init("b1", np.ones(9)))  # 9 values for N_1 = 8
    _bad(device, [5, 8], [relu], "bias", edit=_replace_init("b1", np.ones((1, 8))))  # bias of rank 2
    _bad(device, [5, 8], [relu], "2-D", x_dims=["B", 3, 5])  # X of rank 3
    _bad(device, [5, 8], [relu], "columns", x_dims=["B", 6])  # X's width 6 for K_1 = 5
    _bad(device, [5, 8, 4], [relu], "inputs")  # one activation for two layers
    _bad(device, [5, 8], [7], "activation 7")  # unknown activation code
    _bad(device, [5, C.MLP_MAX_WIDTH + 1, 4], [relu, relu], str(C.MLP_MAX_WIDTH + 1))  # a layer wider than the limit
    _bad(device, [C.MLP_MAX_WIDTH + 1, 4], [relu], str(C.MLP_MAX_WIDTH + 1))  # X wider than the limit
    deep = C.MLP_MAX_LAYERS + 1
    _bad(device, [4] * (deep + 1), [relu] * deep, "activations")  # more layers than the limit

    def beside(value):
        def edit(proto):
            proto.graph.node[0].attribute.append(helper.make_attribute("beside", value))
        return edit
    _bad(device, [5, 8], [relu], "beside must be 0 or 1, got 2", edit=beside(2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,seed", [(1, 1), (64, 2), (257, 3)])
def test_fused_dlrm_matches_unfused_and_pytorch(small_files, device, batch, seed):
    # ORT's CUDA Gemm may run in TF32 (its default): the unfused file is then the less exact one
    rtol = 1e-5 if device == "cpu" else 1e-3
    fused_dlrm.check_fused_matches_unfused_and_pytorch(small_files, device, batch, seed, rtol=rtol, atol=rtol / 10)


@pytest.mark.gpu
@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
def test_fused_dlrm_in_a_cuda_graph(small_files):
    fused_dlrm.check_fused_in_a_cuda_graph(small_files)


@pytest.mark.gpu
@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
def test_overlapped_fused_dlrm_on_cuda(small_files, tmp_path):
    """Overlap's lookups on their own stream beside the fused bottom MLP, plain and in a CUDA graph."""
    from dlrm_deploy.runtime.bench_files import with_variant

    cfg, model, _plain, fused, _ = small_files
    path = tmp_path / "overlap.onnx"
    with_variant(str(fused), str(path), "auto", overlap=True)
    for graph in (False, True):
        sess = dd_ort.ort_session(path, device="cuda", cuda_graph=graph)
        for seed in (7, 8):
            inputs = make_inputs(cfg, 48, seed=seed)
            with torch.no_grad():
                ref = model(*inputs).numpy()
            np.testing.assert_allclose(sess.run(onnx_feeds(sess.input_names, *inputs))[0], ref, rtol=1e-4,
                                       atol=1e-5)
