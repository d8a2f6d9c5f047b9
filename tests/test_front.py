"""dlrm_deploy::Mlp with DLRM's dot interaction in front (the export's fuse_interaction_front pass):
the default export puts the interaction into the top MLP's node where the CUDA kernel takes its
shape, the node computes what the interaction and the chain compute (random nodes against numpy;
whole DLRMs against PyTorch, plain, in both CUDA-graph modes and with overlap), the split and unfuse
passes give back nodes with the same outputs, shapes the CUDA kernel does not take fail there in one
line and are not fused by the export, bad inputs fail with the op's message. CPU provider
everywhere; the CUDA provider on a GPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C
from dlrm_deploy.export import export_onnx
from dlrm_deploy.export.dlrm import DLRM, get_config, make_inputs
from dlrm_deploy.export.interaction import (FRONT_MAX_VECTORS, fuse_interaction_front, split_interaction_front,
                                            unfuse_interaction)
from dlrm_deploy.export.mlp import unfuse_mlp
from dlrm_deploy.runtime import ort as dd_ort
from dlrm_deploy.runtime.accuracy import onnx_feeds

CUDA_OK = dd_ort.cuda_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not CUDA_OK, reason="onnxruntime has no CUDA execution provider")])
DEVICES = ["cpu", CUDA]
ACT = C.MLP_ACTIVATIONS
OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, C.OP_VERSION)]


def _attr(node, name, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


# ------------------------------------------------------------------------------------------------
# One node against numpy


def _reference(parts, dim, pairs, prefix, weights, biases, codes):
    """The interaction (float64), then the chain."""
    b = parts[0].shape[0]
    n = sum(p.shape[1] for p in parts) // dim
    v = np.concatenate(parts, axis=1).reshape(b, n, dim).astype(np.float64)
    z = np.einsum("bid,bjd->bij", v, v).reshape(b, n * n)[:, pairs]
    y = np.concatenate([parts[prefix].astype(np.float64), z], axis=1) if prefix >= 0 else z
    for w, bias, c in zip(weights, biases, codes):
        y = y @ w.astype(np.float64).T + bias
        if c == ACT["relu"]:
            y = np.maximum(y, 0)
        elif c == ACT["sigmoid"]:
            y = 1 / (1 + np.exp(-y))
    return y


def _front_node(widths, dim, pairs, prefix, layer_widths, codes, rng, beside=None):
    """A single Mlp node with an interaction of parts `widths` in front and random weights. Returns
    (model bytes, weights, biases)."""
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["B", w]) for k, w in enumerate(widths)]
    k = (widths[prefix] if prefix >= 0 else 0) + len(pairs)
    inits, names, weights, biases = [], [f"x{i}" for i in range(len(widths))], [], []
    for i, n in enumerate(layer_widths, 1):
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = (0.5 * rng.standard_normal(n)).astype(np.float32)
        weights.append(w)
        biases.append(b)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        names += [f"w{i}", f"b{i}"]
        k = n
    node = helper.make_node(C.MLP_OP_TYPE, names, ["y"], name="top", domain=C.DOMAIN, activations=list(codes),
                            front=len(widths), front_dim=dim, front_pairs=[int(p) for p in pairs],
                            front_prefix=prefix)
    if beside is not None:
        node.attribute.append(helper.make_attribute("beside", beside))
    graph = helper.make_graph([node], "front", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, ir_version=10, opset_imports=OPSETS).SerializeToString(), weights, biases


def _close(got, want):
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
def test_random_front_nodes_match_numpy(device, seed):
    """dim 32, 64 and 128, up to 16 vectors in up to 4 parts, any pairs (either triangle, the
    diagonal, repeats, more than 32 x 3), the prefix any part or none, 1 to 3 layers, batches that
    leave a block part-filled; a second run on fresh inputs."""
    rng = np.random.default_rng(seed)
    dim = int(rng.choice([32, 64, 128]))
    counts = [int(c) for c in rng.integers(1, 5, size=int(rng.integers(1, 5)))]
    while sum(counts) > FRONT_MAX_VECTORS:
        counts.pop()
    widths = [dim * c for c in counts]
    n = sum(counts)
    pairs = rng.integers(0, n * n, size=int(rng.integers(1, min(n * n, 140) + 1)))
    prefix = int(rng.integers(-1, len(widths)))
    layers = [int(v) for v in rng.choice([1, 16, 64, 129], size=int(rng.integers(1, 4)))]
    codes = [int(rng.choice(list(ACT.values()))) for _ in layers]
    batch = int(rng.choice([0, 1, 7, 300, 2049]))
    model, weights, biases = _front_node(widths, dim, pairs, prefix, layers, codes, rng,
                                         beside=1 if seed % 4 == 3 else None)
    sess = dd_ort.ort_session(model, device=device)
    for _ in range(2):
        parts = [rng.standard_normal((batch, w)).astype(np.float32) for w in widths]
        got = sess.run({f"x{k}": p for k, p in enumerate(parts)})[0]
        _close(got, _reference(parts, dim, pairs, prefix, weights, biases, codes))


@pytest.mark.parametrize("device", DEVICES)
def test_the_paper_top_mlp_at_batch_2048(device):
    rng = np.random.default_rng(7)
    n = 13
    pairs = [i * n + j for i in range(n) for j in range(i)]
    codes = [ACT["relu"], ACT["relu"], ACT["sigmoid"]]
    model, weights, biases = _front_node([128, 12 * 128], 128, pairs, 0, [128, 64, 1], codes, rng)
    parts = [rng.standard_normal((2048, w)).astype(np.float32) for w in (128, 12 * 128)]
    got = dd_ort.ort_session(model, device=device).run({"x0": parts[0], "x1": parts[1]})[0]
    _close(got, _reference(parts, 128, pairs, 0, weights, biases, codes))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="onnxruntime has no CUDA execution provider")
@pytest.mark.parametrize("dim,counts,reason", [
    (16, [2, 3], "takes vectors of 32, 64 or 128 floats on CUDA, got 16"),
    (32, [9, 8], "takes at most 16 vectors on CUDA, got 17"),
])
def test_shapes_the_cuda_kernel_does_not_take_fail_there_in_one_line(dim, counts, reason):
    rng = np.random.default_rng(3)
    widths = [dim * c for c in counts]
    n = sum(counts)
    pairs = [i * n + j for i in range(n) for j in range(i)]
    model, weights, biases = _front_node(widths, dim, pairs, 0, [8], [ACT["relu"]], rng)
    parts = [rng.standard_normal((5, w)).astype(np.float32) for w in widths]
    feeds = {f"x{k}": p for k, p in enumerate(parts)}
    _close(dd_ort.ort_session(model, device="cpu").run(feeds)[0],
           _reference(parts, dim, pairs, 0, weights, biases, [ACT["relu"]]))
    with pytest.raises(Exception) as e:
        dd_ort.ort_session(model, device="cuda").run(feeds)
    assert reason in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_fail_with_the_ops_message(device):
    rng = np.random.default_rng(4)
    pairs = [1 * 3 + 0, 2 * 3 + 1]
    model, _w, _b = _front_node([32, 64], 32, pairs, 0, [4], [ACT["none"]], rng)
    proto = onnx.load_from_string(model)
    for i in proto.graph.input:  # any shape: the op's own checks answer
        i.type.tensor_type.ClearField("shape")
    sess = dd_ort.ort_session(proto.SerializeToString(), device=device)
    good = {"x0": np.ones((3, 32), np.float32), "x1": np.ones((3, 64), np.float32)}
    assert sess.run(good)[0].shape == (3, 4)
    cases = [({"x1": np.ones((4, 64), np.float32)}, "differ in their batch size"),
             ({"x1": np.ones((3, 48), np.float32)}, "input 1 has 48 columns, not a multiple of dim 32"),
             ({"x1": np.ones((3, 32), np.float32)}, "pair index 7 is outside the 2 x 2 dot products"),
             ({"x0": np.ones((3, 64), np.float32)}, "layer 1's weight is [4, 34]; its input has 66 columns"),
             ({"x0": np.ones((3, 32, 1), np.float32)}, "must be 2-D")]
    for change, reason in cases:
        with pytest.raises(Exception) as e:
            sess.run({**good, **change})
        assert reason in str(e.value), str(e.value)
    assert sess.run(good)[0].shape == (3, 4)  # the node still runs after its errors


def test_bad_attributes_fail_at_session_creation():
    rng = np.random.default_rng(5)
    model, _w, _b = _front_node([32, 64], 32, [3], 0, [4], [ACT["none"]], rng)
    proto = onnx.load_from_string(model)
    node = proto.graph.node[0]
    for a in node.attribute:
        if a.name == "front_prefix":
            a.i = 2  # not one of the two front inputs
    with pytest.raises(Exception, match="front_prefix must be -1 or one of the first front inputs"):
        dd_ort.ort_session(proto.SerializeToString(), device="cpu")


# ------------------------------------------------------------------------------------------------
# Whole DLRM exports (dim 32: the small config's tables at a width the CUDA kernel takes)


@pytest.fixture(scope="module")
def front_files(tmp_path_factory):
    cfg = get_config("small", dim=32)
    model = DLRM(cfg, seed=0).eval()
    folder = tmp_path_factory.mktemp("front")
    fused = folder / "fused.onnx"
    export_onnx(model, make_inputs(cfg, 16, seed=0), fused)  # the default (validated by onnx.checker)
    return cfg, model, fused, onnx.load(str(fused))


def test_the_default_export_puts_the_interaction_in_front_of_the_top_mlp(front_files):
    cfg, _model, _path, proto = front_files
    assert _ops(proto) == ["Mlp", "EmbeddingBag", "Mlp"]
    top = proto.graph.node[-1]
    n = cfg.num_tables + 1
    assert _attr(top, "front") == 2 and _attr(top, "front_dim") == 32 and _attr(top, "front_prefix") == 0
    assert list(_attr(top, "front_pairs")) == [i * n + j for i in range(n) for j in range(i)]
    assert list(top.input[:2]) == [proto.graph.node[0].output[0], proto.graph.node[1].output[0]]
    assert fuse_interaction_front(proto) == 0  # nothing left


def _check_against_pytorch(cfg, model, path, device, batches=(1, 64, 257), **session):
    sess = dd_ort.ort_session(path, device=device, **session)
    for batch in batches:
        inputs = make_inputs(cfg, batch, seed=batch)
        with torch.no_grad():
            ref = model(*inputs).numpy()
        np.testing.assert_allclose(sess.run(onnx_feeds(sess.input_names, *inputs))[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_front_dlrm_matches_pytorch(front_files, device):
    cfg, model, path, _ = front_files
    _check_against_pytorch(cfg, model, path, device)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_OK, reason="onnxruntime has no CUDA execution provider")
@pytest.mark.parametrize("mode", [True, "ort"])
def test_front_dlrm_in_a_cuda_graph(front_files, mode):
    cfg, model, path, _ = front_files
    _check_against_pytorch(cfg, model, path, "cuda", batches=(32, 32, 48), cuda_graph=mode)


@pytest.mark.parametrize("device", DEVICES)
def test_overlap_with_the_interaction_in_front(front_files, tmp_path, device):
    """Overlap's lookups on their own stream, joined by the top MLP's node itself."""
    from dlrm_deploy.runtime.bench_files import with_variant

    cfg, model, path, _ = front_files
    out = tmp_path / "overlap.onnx"
    with_variant(str(path), str(out), "auto", overlap=True)
    proto = onnx.load(str(out))
    eb = next(n for n in proto.graph.node if n.op_type == C.OP_TYPE)
    assert _attr(eb, "overlap") in (1, 2) and _ops(proto)[-1] == "Mlp" and _attr(proto.graph.node[-1], "front") == 2
    _check_against_pytorch(cfg, model, out, device)
    if device == "cuda":
        _check_against_pytorch(cfg, model, out, device, batches=(40, 40), cuda_graph=True)


def test_split_fuse_and_unfuse_keep_the_outputs(front_files, tmp_path):
    cfg, model, path, proto = front_files
    split = onnx.ModelProto()
    split.CopyFrom(proto)
    assert split_interaction_front(split) == 1
    assert _ops(split) == ["Mlp", "EmbeddingBag", "DotInteraction", "Mlp"]
    assert all(_attr(n, "front") is None for n in split.graph.node)
    again = onnx.ModelProto()
    again.CopyFrom(split)
    assert fuse_interaction_front(again) == 1 and _ops(again) == _ops(proto)
    no_interaction = onnx.ModelProto()
    no_interaction.CopyFrom(proto)
    assert unfuse_interaction(no_interaction) == 1
    assert "DotInteraction" not in _ops(no_interaction) and _ops(no_interaction).count("Mlp") == 2
    no_mlp = onnx.ModelProto()
    no_mlp.CopyFrom(proto)
    unfuse_mlp(no_mlp)
    assert "Mlp" not in _ops(no_mlp) and "DotInteraction" in _ops(no_mlp) and "Gemm" in _ops(no_mlp)
    for name, m in (("split", split), ("no_interaction", no_interaction), ("no_mlp", no_mlp)):
        p = path.parent / f"{name}.onnx"  # beside the external data, if any
        onnx.save(m, str(p))
        _check_against_pytorch(cfg, model, p, "cpu", batches=(9,))


def _interaction_then_mlp(dim, n):
    """DotInteraction (dim, n vectors in two parts) feeding an Mlp node: what the pass fuses or not."""
    parts = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", dim]),
             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["B", dim * (n - 1)])]
    pairs = [i * n + j for i in range(n) for j in range(i)]
    width = dim + len(pairs)
    inter = helper.make_node("DotInteraction", ["a", "b"], ["z"], domain=C.DOMAIN, dim=dim, pairs=pairs, prefix=0)
    mlp = helper.make_node(C.MLP_OP_TYPE, ["z", "w", "bias"], ["y"], domain=C.DOMAIN, activations=[ACT["relu"]])
    inits = [numpy_helper.from_array(np.ones((4, width), np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bias")]
    graph = helper.make_graph([inter, mlp], "g", parts, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, ir_version=10, opset_imports=OPSETS)


@pytest.mark.parametrize("dim,n,fused", [(32, 13, 1), (128, 16, 1), (16, 13, 0), (64, 17, 0), (33, 4, 0)])
def test_the_pass_fuses_only_what_the_cuda_kernel_takes(dim, n, fused):
    proto = _interaction_then_mlp(dim, n)
    assert fuse_interaction_front(proto) == fused
    assert _ops(proto) == (["Mlp"] if fused else ["DotInteraction", "Mlp"])
