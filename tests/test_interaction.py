"""dlrm_deploy::DotInteraction and the fuse_interaction pass: the fused node computes what the chain
it replaces computes (random shapes against numpy; whole DLRMs against the unfused file and
PyTorch), bad shapes fail with the op's message, graphs without the chain are left alone. CPU
provider everywhere; the CUDA provider (plain and in a CUDA graph) where onnxruntime has it."""

from __future__ import annotations

import ctypes
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dlrm_deploy import contract as C
from dlrm_deploy.export.dlrm import make_inputs
from dlrm_deploy.export.interaction import OP_TYPE, fuse_interaction
from dlrm_deploy.runtime import _core
from dlrm_deploy.runtime import ort as dd_ort
from dlrm_deploy.runtime.accuracy import onnx_feeds

import fused_dlrm

DEVICES = ["cpu"] + (["cuda"] if dd_ort.cuda_available() else [])


def _one_node(widths, dim, pairs, prefix):
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["B", w]) for k, w in enumerate(widths)]
    node = helper.make_node(OP_TYPE, [i.name for i in inputs], ["y"], domain=C.DOMAIN, dim=dim,
                            pairs=[int(p) for p in pairs], prefix=prefix)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "interaction", inputs, [out])
    return helper.make_model(graph, ir_version=10,  # onnxruntime 1.31 reads IR <= 13
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, 1)])


def _reference(parts, dim, pairs, prefix):
    b = parts[0].shape[0]
    n = sum(p.shape[1] for p in parts) // dim
    v = np.concatenate(parts, axis=1).reshape(b, n, dim).astype(np.float64)
    z = np.einsum("bid,bjd->bij", v, v).reshape(b, n * n)[:, pairs]
    return np.concatenate([parts[prefix], z], axis=1) if prefix >= 0 else z


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_match_numpy(device, seed):
    """Any dim (32, 64 and 128 take the CUDA warp-per-sample kernel up to 16 vectors, others the
    block-per-sample one), any pairs (either triangle, the diagonal, repeats)."""
    rng = np.random.default_rng(seed)
    dim = int(rng.choice([1, 3, 16, 32, 33, 64, 128]))
    widths = [dim * int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 5)))]
    n = sum(widths) // dim
    pairs = rng.integers(0, n * n, size=int(rng.integers(1, 3 * n + 2)))  # the pass normalises negatives
    prefix = int(rng.integers(-1, len(widths)))
    batch = int(rng.choice([0, 1, 7, 300]))
    parts = [rng.standard_normal((batch, w)).astype(np.float32) for w in widths]
    sess = dd_ort.ort_session(_one_node(widths, dim, pairs, prefix).SerializeToString(), device=device)
    got = sess.run({f"x{k}": p for k, p in enumerate(parts)})[0]
    want = _reference(parts, dim, pairs, prefix)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim,widths,prefix", [(32, [64, 128, 320], 1), (128, [128, 1536], 0), (64, [64, 192, 64], 2)])
def test_many_pairs_and_any_prefix_part(device, dim, widths, prefix):
    """Every dot of up to 16 vectors, repeats included (more than the CUDA warp kernel's lanes read
    ahead: 96), with the prefix any part (the warp kernel writes it from its lanes' registers)."""
    rng = np.random.default_rng(dim)
    n = sum(widths) // dim
    pairs = np.concatenate([np.arange(n * n), rng.integers(0, n * n, size=17)])
    parts = [rng.standard_normal((33, w)).astype(np.float32) for w in widths]
    sess = dd_ort.ort_session(_one_node(widths, dim, pairs, prefix).SerializeToString(), device=device)
    got = sess.run({f"x{k}": p for k, p in enumerate(parts)})[0]
    want = _reference(parts, dim, pairs, prefix)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * dim)


def test_cpu_generic_dot_matches_numpy():
    """The CPU forward's generic dot (CPUs without AVX2/FMA; DD_CPU_SIMD=0 selects it anywhere), in a
    process of its own: the choice is made once per process."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_interaction as t\n"
            "for seed in range(12): t.test_random_shapes_match_numpy('cpu', seed)\n")
    r = subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent)], capture_output=True,
                       text=True, env={**os.environ, "DD_CPU_SIMD": "0"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_shapes_fail_with_the_ops_message(device):
    sess = dd_ort.ort_session(_one_node([6, 8], 4, [0, 1], -1).SerializeToString(), device=device)
    with pytest.raises(Exception, match="DotInteraction.*not a multiple of dim 4"):
        sess.run({"x0": np.zeros((2, 6), np.float32), "x1": np.zeros((2, 8), np.float32)})
    sess = dd_ort.ort_session(_one_node([4, 4], 4, [0, 4], -1).SerializeToString(), device=device)
    with pytest.raises(Exception, match="pair index 4 is outside the 2 x 2 dot products"):
        sess.run({"x0": np.zeros((2, 4), np.float32), "x1": np.zeros((2, 4), np.float32)})


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    return fused_dlrm.small_files(tmp_path_factory, "interaction", fuse_interaction, 1, "fuse_interaction")


def test_the_chain_becomes_one_node(small_files):
    *_, proto = small_files
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count(OP_TYPE) == 1
    for gone in ("Concat", "Reshape", "Transpose", "MatMul", "Gather"):
        assert gone not in ops, ops
    node = next(n for n in proto.graph.node if n.op_type == OP_TYPE)
    cfg = small_files[0]
    n = cfg.num_tables + 1
    pairs = helper.get_attribute_value(next(a for a in node.attribute if a.name == "pairs"))
    assert pairs == [i * n + j for i in range(n) for j in range(i)]  # the model's lower triangle
    used = {x for nd in proto.graph.node for x in nd.input}
    assert all(t.name in used for t in proto.graph.initializer)  # the chain's constants went with it
    assert fuse_interaction(proto) == 0  # nothing left to fuse


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,seed", [(1, 1), (64, 2), (257, 3)])
def test_fused_dlrm_matches_unfused_and_pytorch(small_files, device, batch, seed):
    fused_dlrm.check_fused_matches_unfused_and_pytorch(small_files, device, batch, seed, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
def test_fused_dlrm_in_a_cuda_graph(small_files):
    fused_dlrm.check_fused_in_a_cuda_graph(small_files)


def _matches_pytorch(proto, path, cfg, model, batch, seed):
    """proto saved at path runs in ORT's CPU provider like the PyTorch model on fresh inputs."""
    onnx.save(proto, str(path))
    inputs = make_inputs(cfg, batch, seed=seed)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    sess = dd_ort.ort_session(path, device="cpu")
    np.testing.assert_allclose(sess.run(onnx_feeds(sess.input_names, *inputs))[0], ref, rtol=1e-4, atol=1e-5)


def test_overlap_then_fuse_absorbs_the_join(small_files, tmp_path):
    """With overlap the first Concat is a Join (streams joined there): the fused node takes the
    Join's inputs in concatenation order and joins the lookups' stream itself."""
    from dlrm_deploy.export.overlap import apply_overlap

    cfg, model, plain, _fused, _ = small_files
    proto = onnx.load(str(plain))
    assert apply_overlap(proto) == 1
    assert fuse_interaction(proto) == 1
    ops = [n.op_type for n in proto.graph.node]
    assert C.JOIN_OP_TYPE not in ops and OP_TYPE in ops and "Concat" not in ops, ops
    node = next(n for n in proto.graph.node if n.op_type == OP_TYPE)
    assert list(node.input) == ["relu_1", "dd_group0_output"]
    _matches_pytorch(proto, tmp_path / "both.onnx", cfg, model, 40, 9)


def test_unfuse_restores_standard_ops(small_files, tmp_path):
    """trt-build's expansion: no dlrm_deploy node but the EmbeddingBag, same outputs."""
    from dlrm_deploy.export.interaction import unfuse_interaction

    cfg, model, _plain, fused, _ = small_files
    proto = onnx.load(str(fused))
    assert unfuse_interaction(proto) == 1
    assert {n.op_type for n in proto.graph.node if n.domain == C.DOMAIN} == {C.OP_TYPE, C.MLP_OP_TYPE}
    onnx.checker.check_model(proto)
    _matches_pytorch(proto, tmp_path / "unfused.onnx", cfg, model, 33, 8)


def test_export_cli_fuses_by_default(tmp_path):
    for extra, want in (([], 1), (["--no-fuse-interaction"], 0)):
        assert fused_dlrm.cli_export_ops(tmp_path, *extra).count(OP_TYPE) == want


def test_graphs_without_the_chain_are_left_alone(small_files):
    *_, proto0 = small_files
    cfg, _model, plain, _fused, _ = small_files
    proto = onnx.load(str(plain))
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    # pairs from a graph input instead of a constant: not fusable
    proto.graph.input.append(helper.make_tensor_value_info("pairs_in", TensorProto.INT64, [None]))
    gather.input[1] = "pairs_in"
    before = proto.SerializeToString()
    assert fuse_interaction(proto) == 0
    assert proto.SerializeToString() == before


@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
def test_cuda_wide_samples_and_shared_memory_limit():
    """Samples past 48 KB of staged vectors (the kernel asks for more shared memory) match numpy;
    past the device's limit the run fails with the op's message instead of launching."""
    rng = np.random.default_rng(5)
    dim, widths = 128, [128, 199 * 128]  # 200 vectors: 100 KB a sample
    pairs = rng.integers(0, 200 * 200, size=300)
    parts = [rng.standard_normal((9, w)).astype(np.float32) for w in widths]
    sess = dd_ort.ort_session(_one_node(widths, dim, pairs, 0).SerializeToString(), device="cuda")
    got = sess.run({f"x{k}": p for k, p in enumerate(parts)})[0]
    np.testing.assert_allclose(got, _reference(parts, dim, pairs, 0), rtol=1e-5, atol=1e-3)
    huge = [64, 64 * 4096]  # 4097 vectors of 64 floats: over 1 MB a sample
    sess = dd_ort.ort_session(_one_node(huge, 64, [0, 1], -1).SerializeToString(), device="cuda")
    with pytest.raises(Exception, match="do not fit in shared memory"):
        sess.run({"x0": np.zeros((2, 64), np.float32), "x1": np.zeros((2, 64 * 4096), np.float32)})


class _Args(ctypes.Structure):
    """dd_interaction_args (dlrm_deploy/interaction.h)."""
    _fields_ = [("parts", ctypes.c_void_p * 16), ("widths", ctypes.c_int64 * 16), ("count", ctypes.c_int32),
                ("batch", ctypes.c_int64), ("dim", ctypes.c_int64), ("pairs", ctypes.POINTER(ctypes.c_int64)),
                ("num_pairs", ctypes.c_int64), ("prefix", ctypes.c_int32), ("out", ctypes.c_void_p)]


def test_cpu_rows_compute_exactly_their_samples_or_refuse_the_range():
    """dd_interaction_cpu_rows (the op's per-thread call): [begin, end) written, every other row left
    as it was; a range outside the batch is refused with a message."""
    lib = _core.lib()
    lib.dd_interaction_cpu_rows.argtypes = [ctypes.POINTER(_Args), ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p,
                                            ctypes.c_size_t]
    rng = np.random.default_rng(5)
    dim, widths, batch = 32, [32, 96], 9
    parts = [rng.standard_normal((batch, w)).astype(np.float32) for w in widths]
    pairs = np.array([1 * 4 + 0, 3 * 4 + 2, 2 * 4 + 2, 0 * 4 + 3], dtype=np.int64)
    want = _reference(parts, dim, pairs, 0)
    out = np.full(want.shape, np.nan, dtype=np.float32)
    a = _Args()
    for k, p in enumerate(parts):
        a.parts[k] = p.ctypes.data
        a.widths[k] = p.shape[1]
    a.count, a.batch, a.dim, a.prefix, a.num_pairs = len(parts), batch, dim, 0, len(pairs)
    a.pairs = pairs.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    a.out = out.ctypes.data
    msg = ctypes.create_string_buffer(256)
    assert lib.dd_interaction_cpu_rows(ctypes.byref(a), 2, 6, msg, 256) == 0, msg.value
    np.testing.assert_allclose(out[2:6], want[2:6], rtol=1e-5, atol=1e-5 * dim)
    assert np.isnan(out[:2]).all() and np.isnan(out[6:]).all()
    for begin, end in [(-1, 3), (0, batch + 1), (5, 4)]:
        assert lib.dd_interaction_cpu_rows(ctypes.byref(a), begin, end, msg, 256) == 2  # DD_ERR_INPUT
        assert b"outside the batch" in msg.value
