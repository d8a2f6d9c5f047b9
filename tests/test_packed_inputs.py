"""Packed lookup inputs (export/packed_inputs.py): a fused EmbeddingBag node's 2T per-table inputs
become one ids and one offsets input (and one weights input), int32 where the tables allow, and
the model computes exactly what the exported one does; inputs something else reads stay; the
python backend's repository serves the packed model and its merged runs match the export."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dlrm_deploy.export import DLRM, export_onnx, make_inputs
from dlrm_deploy.export.packed_inputs import pack_feeds, to_packed_inputs
from dlrm_deploy.runtime import triton as T
from dlrm_deploy.runtime import triton_python as P
from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs
from dlrm_deploy.runtime.ort import ort_session

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_export import Generic, generic_inputs  # noqa: E402

spec_ = importlib.util.spec_from_file_location("model_py", P.MODEL_TEMPLATE)
model_py = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(model_py)


def run(path, feeds) -> np.ndarray:
    sess = ort_session(str(path), device="cpu")
    return sess.run(feeds)[0]


@pytest.mark.parametrize("ids", [torch.int32, torch.int64])
def test_packed_inputs_compute_what_the_per_table_inputs_do(tmp_path, ids):
    """A model with a weighted group with include_last_offset, a mean group and a 2-D input: both
    groups become packed (int32 ids and offsets either way: the tables are small); the 2-D input's
    one-table node stays; outputs equal the export's on fresh inputs."""
    torch.manual_seed(0)
    model = Generic().eval()
    path = tmp_path / "g.onnx"
    export_onnx(model, generic_inputs(6, 1, index_dtype=ids), path)
    exported = onnx.load(str(path))
    packed, n = to_packed_inputs(exported)
    assert n == 2
    onnx.checker.check_model(packed, full_check=True)
    types = {i.name: i.type.tensor_type.elem_type for i in packed.graph.input}
    assert types["indices"] == types["offsets"] == TensorProto.INT32
    assert types["per_sample_weights"] == TensorProto.FLOAT and "lookups1_indices" in types
    assert not any(name.startswith(("i1", "o1", "i3", "w2")) for name in types)
    packed_path = tmp_path / "p.onnx"
    onnx.save(packed, str(packed_path))
    for seed in range(3):
        x = generic_inputs(int(np.random.default_rng(seed).integers(1, 12)), 20 + seed, index_dtype=ids)
        feeds = dict(zip([i.name for i in exported.graph.input], [t.numpy() for t in x]))
        want = run(path, feeds)
        got = run(packed_path, pack_feeds(exported, packed, feeds))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_inputs_read_elsewhere_stay(tmp_path):
    """A node whose ids another node reads too keeps its per-table inputs; so do models without
    fused per-table nodes (nothing to do)."""
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    export_onnx(DLRM("small", seed=0), make_inputs("small", 4, seed=1), path)
    exported = onnx.load(str(path))
    g = exported.graph
    g.node.append(helper.make_node("Shape", ["indices_1"], ["n_1"]))
    g.output.append(helper.make_tensor_value_info("n_1", TensorProto.INT64, [1]))
    packed, n = to_packed_inputs(exported)
    assert n == 0 and [i.name for i in packed.graph.input] == [i.name for i in g.input]
    again, n = to_packed_inputs(to_packed_inputs(onnx.load(str(path)))[0])
    assert n == 0 and [i.name for i in again.graph.input] == ["dense", "indices", "offsets"]


@pytest.mark.parametrize("include_last_offset", [False, True])
def test_python_repo_serves_packed_inputs(tmp_path, include_last_offset):
    """triton-repo --backend python (packed request form) writes the model with packed int32
    lookup inputs; merged requests run on it give each request the export's rows; the tables
    request form keeps the exported inputs."""
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    export_onnx(DLRM("small", seed=0, include_last_offset=include_last_offset),
                make_inputs("small", 4, seed=1, include_last_offset=include_last_offset), path)
    io = describe_onnx(path)
    md = T.triton_repo(path, tmp_path / "repo", backend="python", kind="cpu", max_batch_size=16, validate=True)
    served = tmp_path / "repo" / "dlrm" / "1" / "model.onnx"
    served_io = describe_onnx(served)
    assert [(t.name, t.elem_type) for t in served_io.inputs] == [
        ("dense", TensorProto.FLOAT), ("indices", TensorProto.INT32), ("offsets", TensorProto.INT32)]
    spec = P.io_spec(served_io, "packed")
    assert (md / "1" / P.IO_FILE).read_text().count('"indices_dtype": "int32"') == 1
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=b) for b, p in ((3, 2), (1, 5), (6, 1), (2, 0))]
    parsed = [model_py.parse_request(P.request_from_feeds(f, P.io_spec(io, "packed")).get, spec) for f in feeds]
    sess = ort_session(str(served), device="cpu")
    outs = dict(zip(sess.output_names, sess.run(model_py.merge(parsed, spec))))
    for f, part in zip(feeds, model_py.split(outs, [p["b"] for p in parsed])):
        np.testing.assert_allclose(part[sess.output_names[0]][0], run(path, f), rtol=1e-5, atol=1e-6)
    T.triton_repo(path, tmp_path / "tables", backend="python", kind="cpu", max_batch_size=16, request_form="tables")
    kept = describe_onnx(tmp_path / "tables" / "dlrm" / "1" / "model.onnx")
    assert [t.name for t in kept.inputs] == [t.name for t in io.inputs]
    T.triton_repo(path, tmp_path / "kept", backend="python", kind="cpu", packed_inputs=False)
    kept = describe_onnx(tmp_path / "kept" / "dlrm" / "1" / "model.onnx")
    assert [t.name for t in kept.inputs] == [t.name for t in io.inputs]
    with pytest.raises(ValueError, match="python and native backends"):
        T.triton_repo(path, tmp_path / "ort", backend="onnxruntime", kind="cpu", packed_inputs=False)


def test_merge_writes_merged_inputs_where_take_says():
    """merge's take hook: merged dense rows and ids land in the arrays it hands out (the model's
    page-locked buffers on the GPU), one request's arrays pass through untouched."""
    spec = {"form": "packed", "dense": [{"name": "dense"}], "outputs": ["y"],
            "bags": [{"indices": "indices", "offsets": "offsets", "lengths": "lengths", "weights": None,
                      "tables": 2, "table_rows": [10, 10], "include_last_offset": 0, "indices_dtype": "int32",
                      "offsets_dtype": "int32"}],
            "packed": {"ids": "ids", "lengths": "lengths", "weights": None, "tables": 2, "bag_tables": [[0, 2]],
                       "weighted": [False, False], "ids_dtype": "int32", "index_dtype": "int32"}}
    rng = np.random.default_rng(0)
    reqs = []
    for b in (2, 3):
        lengths = rng.integers(0, 4, size=2 * b).astype(np.int32)
        reqs.append({"dense": rng.standard_normal((1, b, 3)).astype(np.float32), "lengths": lengths[None],
                     "ids": rng.integers(0, 10, size=int(lengths.sum())).astype(np.int32)[None]})
    parsed = [model_py.parse_request(r.get, spec) for r in reqs]
    handed = {}

    def take(name, shape, dtype):
        handed[name] = np.full(shape, -1, dtype)
        return handed[name]

    merged = model_py.merge(parsed, spec, take)
    assert set(handed) == {"dense", "ids"}
    assert merged["dense"] is handed["dense"] and np.shares_memory(merged["indices"], handed["ids"])
    plain = model_py.merge(parsed, spec)
    for k in plain:
        np.testing.assert_array_equal(merged[k], plain[k])
    one = model_py.merge(parsed[:1], spec, take)
    assert np.shares_memory(one["indices"], reqs[0]["ids"])


class FakeCudart:
    """cudaHostRegister / cudaHostUnregister as ctypes calls them, recording the addresses; refuses
    registrations past `fail_after` (as a locked-memory limit would)."""

    def __init__(self, fail_after=None):
        self.locked, self.calls, self.fail_after = {}, 0, fail_after

    def cudaHostRegister(self, ptr, size, flags):  # noqa: N802 - the CUDA runtime's name
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            return 2  # cudaErrorMemoryAllocation
        assert ptr.value not in self.locked and flags == 0
        self.locked[ptr.value] = size.value
        return 0

    def cudaHostUnregister(self, ptr):  # noqa: N802
        assert self.locked.pop(ptr.value, None) is not None, "unregistering memory that is not locked"
        return 0


def test_pinned_staging_keeps_grows_and_releases_its_buffers():
    """One locked buffer per input, reused while the merges fit, replaced (the old one unlocked)
    when one does not; a refused lock gives a plain array; close unlocks everything."""
    cudart = FakeCudart()
    st = model_py.PinnedStaging(cudart)
    a = st.take("ids", (1000,), np.int32)
    b = st.take("ids", (2000,), np.int32)  # fits the first buffer (at least 1 MiB)
    assert np.shares_memory(a, b) and cudart.calls == 1 and a.dtype == np.int32 and b.shape == (2000,)
    d = st.take("dense", (3, 256), np.float32)
    assert d.shape == (3, 256) and len(cudart.locked) == 2
    big = st.take("ids", (1 << 20,), np.int64)  # 8 MiB: a new buffer, the old one unlocked
    assert not np.shares_memory(big, a) and len(cudart.locked) == 2 and cudart.calls == 3
    assert max(cudart.locked.values()) >= big.nbytes
    big[:] = 7  # the view is writable memory of the locked buffer
    assert big.sum() == 7 << 20
    st.close()
    assert not cudart.locked
    refused = model_py.PinnedStaging(FakeCudart(fail_after=0))
    plain = refused.take("ids", (10,), np.int32)
    assert plain.shape == (10,) and not refused._buffers
    refused.close()
