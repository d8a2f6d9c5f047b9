"""export/lengths.py (offsets inputs -> per-sample lengths inputs, offsets derived with CumSum) and
the ragged-batching repository of the onnxruntime backend it enables: the lengths form answers like
the offsets form; Triton's ragged merge (each input concatenated 1-D over the requests, outputs
scattered back by a lengths input's per-request size) done by hand gives every request its own rows;
the config parses with Triton's schema. No server: no wheel ships the onnxruntime backend."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest

from dlrm_deploy.export.lengths import to_lengths_form
from dlrm_deploy.runtime import triton as T
from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs
from dlrm_deploy.runtime.ort import ort_session

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_ort_runtime import DIM  # noqa: E402
from test_ort_runtime import per_table_model as _per_table_model  # noqa: E402  (the exporter's per-table layout)

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def per_table_model() -> onnx.ModelProto:
    """The exporter's per-table layout (test_ort_runtime), reduced to one score per sample [B, 1]."""
    m = _per_table_model()
    g = m.graph
    g.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "sum_axes"))
    g.node.append(onnx.helper.make_node("ReduceSum", ["out", "sum_axes"], ["score"], keepdims=1))
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["s0", 1]))
    return m


def model_with_last_offset() -> onnx.ModelProto:
    """One table read through B+1 offsets (include_last_offset), listed in the exporter's metadata."""
    from onnx import TensorProto, helper, numpy_helper

    from dlrm_deploy import contract

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, DIM)).astype(np.float32), "w")
    node = helper.make_node(contract.OP_TYPE, ["w", "ids", "offs"], ["pooled"], domain=contract.DOMAIN,
                            table_rows=[10], dim=DIM, include_last_offset=1)
    graph = helper.make_graph([node], "ilo", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
                                              helper.make_tensor_value_info("offs", TensorProto.INT64, ["b1"])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["b", DIM])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    m.metadata_props.add(key="dlrm_deploy.tables", value=json.dumps(
        [{"rows": 10, "dim": DIM, "indices": "ids", "offsets": "offs", "include_last_offset": 1}]))
    return m


def to_lengths(feeds: dict, tables: list[dict]) -> dict:
    out = dict(feeds)
    for t in tables:
        offs = out.pop(t["offsets"]).astype(np.int64)
        ends = offs if t.get("include_last_offset") else np.append(offs, len(feeds[t["indices"]]))
        out[t["lengths"]] = np.diff(ends).astype(feeds[t["offsets"]].dtype)
    return out


def test_lengths_form_answers_like_offsets_form():
    model = per_table_model()
    lm = to_lengths_form(model)
    onnx.checker.check_model(lm)
    tables = json.loads({p.key: p.value for p in lm.metadata_props}["dlrm_deploy.tables"])
    io = describe_onnx(lm)
    assert [t.name for t in io.inputs] == ["dense", "indices_0", "lengths_0", "indices_1", "lengths_1"]
    assert {t.name: t.role for t in io.inputs}["lengths_1"] == "lengths"
    feeds = sample_inputs(model, batch=7, pooling=3, seed=2)
    want = ort_session(model, device="cpu").run(feeds)[0]
    got = ort_session(lm, device="cpu").run(to_lengths(feeds, tables))[0]
    np.testing.assert_array_equal(got, want)
    generated = sample_inputs(lm, batch=5, pooling=2)  # the generator knows the lengths form too
    assert generated["lengths_0"].shape == (5,) and generated["lengths_0"].sum() == len(generated["indices_0"])
    assert ort_session(lm, device="cpu").run(generated)[0].shape[0] == 5
    with pytest.raises(ValueError, match="already"):
        to_lengths_form(lm)


def test_include_last_offset_and_bad_lengths_are_the_ops_error():
    model = model_with_last_offset()
    lm = to_lengths_form(model)
    tables = json.loads({p.key: p.value for p in lm.metadata_props}["dlrm_deploy.tables"])
    feeds = sample_inputs(model, batch=4, pooling=2, seed=3)
    np.testing.assert_array_equal(ort_session(lm, device="cpu").run(to_lengths(feeds, tables))[0],
                                  ort_session(model, device="cpu").run(feeds)[0])
    bad = to_lengths(feeds, tables)
    assert set(bad) == {"ids", "offs_lengths"}
    bad["offs_lengths"] = bad["offs_lengths"] + 5  # offsets past the end of the ids: the op refuses them
    with pytest.raises(Exception, match="offs"):
        ort_session(lm, device="cpu").run(bad)


def test_ragged_merge_by_concatenation_is_exact():
    """What Triton's onnxruntime backend does with ragged inputs, by hand: concatenate every input
    1-D over the requests, run once, scatter the output by each request's lengths_0 size."""
    model = per_table_model()
    lm = to_lengths_form(model, flat_dense=True)
    tables = json.loads({p.key: p.value for p in lm.metadata_props}["dlrm_deploy.tables"])
    sess, ref = ort_session(lm, device="cpu"), ort_session(model, device="cpu")
    reqs = [sample_inputs(model, batch=b, pooling=p, seed=b) for b, p in ((1, 4), (6, 1), (3, 9))]
    flat = [{k: v.reshape(-1) for k, v in to_lengths(f, tables).items()} for f in reqs]
    merged = {k: np.concatenate([f[k] for f in flat]) for k in flat[0]}
    out = sess.run(merged)[0].reshape(-1)
    sizes = [len(f["lengths_0"]) for f in flat]
    for f, part in zip(reqs, np.split(out, np.cumsum(sizes)[:-1])):
        np.testing.assert_allclose(part, ref.run(f)[0].reshape(-1), rtol=1e-6, atol=1e-7)


def test_onnxruntime_ragged_repository(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(per_table_model(), str(src))
    lib = tmp_path / T.ORT_LIBRARY
    lib.write_bytes(b"\x7fELF stand-in")
    (tmp_path / "build_info.json").write_text('{"cuda": {"built": true}, "ort": {"providers": "CPU + CUDA"}}')
    md = T.triton_repo(src, tmp_path / "repo", backend="onnxruntime", lengths=True, library=lib,
                       preferred_batch_sizes=[8, 16], validate=True)
    from google.protobuf import text_format

    cfg = text_format.Parse((md / "config.pbtxt").read_text(), pb.ModelConfig())
    assert cfg.max_batch_size == 64 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [i.name for i in cfg.input] == ["dense", "indices_0", "lengths_0", "indices_1", "lengths_1"]
    assert all(i.allow_ragged_batch and list(i.dims) == [-1] for i in cfg.input)
    (bo,) = cfg.batch_output
    assert bo.kind == pb.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE and list(bo.source_input) == ["lengths_0"]
    assert list(bo.target_name) == ["score"]
    served = onnx.load(str(md / "1" / "model.onnx"))
    assert {p.key: p.value for p in served.metadata_props}["dlrm_deploy.input_form"] == "lengths_flat"
    data = json.loads((md / "perf_data.json").read_text())["data"][0]
    assert data["dense"]["shape"] == [64 * 5] and data["lengths_0"]["shape"] == [64]
    cfg_path = md / "config.pbtxt"
    text = cfg_path.read_text()
    cfg_path.write_text(text[:text.index("batch_output [")] + text[text.index("instance_group ["):])
    with pytest.raises(ValueError, match="batch_output"):
        T.validate_repo(md)
    with pytest.raises(ValueError, match="onnxruntime backend"):
        T.triton_repo(src, tmp_path / "repo2", backend="tensorrt", lengths=True, library=lib)


def test_lengths_command_line(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "m_lengths.onnx"
    onnx.save(per_table_model(), str(src))
    r = subprocess.run([sys.executable, "-m", "dlrm_deploy.export.lengths", str(src), str(dst)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "lengths_0" in [i.name for i in onnx.load(str(dst)).graph.input]
    r = subprocess.run([sys.executable, "-m", "dlrm_deploy.export.lengths", str(dst), str(tmp_path / "x.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already" in r.stderr
