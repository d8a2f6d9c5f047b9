"""dlrm_deploy.runtime.ort (sessions, I/O, placement) and `dlrm-deploy run` on a small model."""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from dlrm_deploy import contract  # noqa: E402
from dlrm_deploy.runtime import ort as dd_ort  # noqa: E402
from dlrm_deploy.runtime import run_cli  # noqa: E402

try:
    dd_ort.custom_op_library()
except FileNotFoundError as e:
    pytest.skip(f"ONNX Runtime op library not built: {e}", allow_module_level=True)

ROWS = [11, 300, 4]
DIM = 4


def small_dlrm(path: pathlib.Path | None = None, index=TensorProto.INT64, dtype="fp16") -> onnx.ModelProto:
    """dense [B, 3] -> concat with the pooled embeddings [B, T*D]: tables as an initializer, the
    node's output an intermediate (typed only by value_info)."""
    rng = np.random.default_rng(0)
    elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[dtype]
    table = rng.standard_normal((sum(ROWS), DIM)).astype(np.float16 if dtype == "fp16" else np.float32)
    weights = helper.make_tensor("tables", elem, table.shape, table.tobytes(), raw=True)
    nodes = [
        helper.make_node(contract.OP_TYPE, ["tables", "indices", "offsets"], ["pooled"], domain=contract.DOMAIN,
                         name="embedding_bag", table_rows=ROWS, dim=DIM, dtype=dtype, mode="sum"),
        helper.make_node("Concat", ["dense", "pooled"], ["features"], axis=1, name="concat"),
    ]
    inputs = [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", 3]),
              helper.make_tensor_value_info("indices", index, ["N"]),
              helper.make_tensor_value_info("offsets", index, ["O"])]
    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 3 + len(ROWS) * DIM])]
    graph = helper.make_graph(nodes, "small_dlrm", inputs, outputs, initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, str(path))
    return model


def test_custom_op_library_path():
    path = pathlib.Path(dd_ort.custom_op_library())
    assert path.name == "libdlrm_deploy_ort.so" and path.exists()


def test_declare_output_types_adds_missing_value_info():
    model = small_dlrm()
    assert dd_ort.declare_output_types(model) == 1
    vi = {v.name: v for v in model.graph.value_info}["pooled"]
    assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
    assert dd_ort.declare_output_types(model) == 0  # idempotent


def test_random_inputs_are_valid(tmp_path):
    path = tmp_path / "m.onnx"
    small_dlrm(path, index=TensorProto.INT32)
    feeds = run_cli.random_inputs(path, batch=16, pooling=5, seed=1)
    assert feeds["dense"].shape == (16, 3)
    off, idx = feeds["offsets"], feeds["indices"]
    assert off.dtype == np.int32 and idx.dtype == np.int32 and off.shape == (len(ROWS) * 16,)
    assert np.all(np.diff(off) >= 0) and off[0] == 0 and off[-1] <= len(idx)
    for t, r in enumerate(ROWS):
        start = off[t * 16]
        end = off[(t + 1) * 16] if t + 1 < len(ROWS) else len(idx)
        assert np.all((idx[start:end] >= 0) & (idx[start:end] < r))
    (out,) = dd_ort.ort_session(path, device="cpu").run(feeds)
    assert out.shape == (16, 3 + len(ROWS) * DIM)
    np.testing.assert_array_equal(out[:, :3], feeds["dense"])


def test_cli_run_prints_timing(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    small_dlrm(path)
    parser = argparse.ArgumentParser()
    run_cli.add_arguments(parser)
    args = parser.parse_args([str(path), "--device", "cpu", "--batch", "8", "--runs", "3", "--warmup", "1"])
    assert run_cli.main(args) == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "CPUExecutionProvider" in text and "out features" in text


def test_cli_trt_without_tensorrt_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dlrm_deploy.runtime.trt", None)  # as if TensorRT support were absent
    parser = argparse.ArgumentParser()
    run_cli.add_arguments(parser)
    assert run_cli.main(parser.parse_args([str(tmp_path / "x.plan"), "--runtime", "trt"])) == 2
    assert "TensorRT" in capsys.readouterr().err


@pytest.mark.skipif(dd_ort.cuda_available(), reason="onnxruntime has the CUDA execution provider")
def test_cuda_device_without_cuda_ep_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        dd_ort.ort_session(small_dlrm().SerializeToString(), device="cuda")


def test_cuda_graph_modes_are_checked():
    """cuda_graph is True (our capture), "ort" (ONNX Runtime's graph mode) or False, and needs CUDA."""
    model = small_dlrm().SerializeToString()
    with pytest.raises(ValueError, match="cuda_graph takes True"):
        dd_ort.ort_session(model, device="cuda", cuda_graph="yes")
    for mode in (True, "ort"):
        with pytest.raises(ValueError, match="cuda_graph needs device='cuda'"):
            dd_ort.ort_session(model, device="cpu", cuda_graph=mode)
    if not dd_ort.cuda_available():
        with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
            dd_ort.ort_session(model, device="cuda", cuda_graph=True)


def test_stream_and_event_timing_need_cuda():
    """stream= (ORT's user compute stream) is for CUDA sessions; events=True timing needs one."""
    with pytest.raises(ValueError, match="stream= needs device='cuda'"):
        dd_ort.ort_session(small_dlrm().SerializeToString(), device="cpu", stream=1234)
    sess = dd_ort.ort_session(small_dlrm().SerializeToString(), device="cpu")
    feeds = run_cli.random_inputs(small_dlrm(), batch=4)
    with pytest.raises(ValueError, match="events=True"):
        sess.time_runs(feeds, runs=1, warmup=0, events=True)
    assert sess.time_runs(feeds, runs=2, warmup=0)["runs"] == 2


def test_external_data_model_with_patched_types(tmp_path):
    """A model whose tables live in external data and whose custom-op output is untyped: the
    session is built from a patched copy beside the data file, removed afterwards."""
    path = tmp_path / "ext.onnx"
    onnx.save(small_dlrm(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    feeds = run_cli.random_inputs(path, batch=4)
    ref = dd_ort.ort_session(small_dlrm(), device="cpu").run(feeds)[0]
    out = dd_ort.ort_session(path, device="cpu").run(feeds)[0]
    np.testing.assert_array_equal(out, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]


def test_node_providers_names_the_custom_node():
    model = small_dlrm()
    feeds = run_cli.random_inputs(model, batch=4)
    placement = dd_ort.node_providers(model, feeds, device="cpu")
    assert placement["embedding_bag"] == {"op_type": "EmbeddingBag", "provider": "CPUExecutionProvider"}


def per_table_model() -> onnx.ModelProto:
    """Like the exporter's table-batched graphs: per-table indices/offsets inputs listed in the
    dlrm_deploy.tables metadata, merged in the graph into one node; dense width only implied by
    a Gemm weight (the input's dims are all symbolic)."""
    import json

    rows = [9, 500]
    rng = np.random.default_rng(2)
    table = rng.standard_normal((sum(rows), DIM)).astype(np.float32)
    w = rng.standard_normal((2, 5)).astype(np.float32)
    inits = [helper.make_tensor("tables", TensorProto.FLOAT, table.shape, table.tobytes(), raw=True),
             helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.tobytes(), raw=True)]
    nodes = [
        helper.make_node("Shape", ["indices_0"], ["n0"]),
        helper.make_node("Add", ["offsets_1", "n0"], ["off1"]),
        helper.make_node("Concat", ["indices_0", "indices_1"], ["idx"], axis=0),
        helper.make_node("Concat", ["offsets_0", "off1"], ["off"], axis=0),
        helper.make_node(contract.OP_TYPE, ["tables", "idx", "off"], ["pooled"], domain=contract.DOMAIN,
                         table_rows=rows, dim=DIM),
        helper.make_node("Gemm", ["dense", "w"], ["bottom"], transB=1),
        helper.make_node("Concat", ["bottom", "pooled"], ["out"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["s0", "s1"])]
    for t in range(2):
        inputs += [helper.make_tensor_value_info(f"indices_{t}", TensorProto.INT64, [f"n{t}"]),
                   helper.make_tensor_value_info(f"offsets_{t}", TensorProto.INT64, ["s0"])]
    graph = helper.make_graph(nodes, "per_table", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    model.ir_version = 8
    tables = [{"rows": r, "dim": DIM, "indices": f"indices_{t}", "offsets": f"offsets_{t}", "include_last_offset": 0}
              for t, r in enumerate(rows)]
    model.metadata_props.add(key="dlrm_deploy.tables", value=json.dumps(tables))
    return model


def test_random_inputs_from_exporter_metadata():
    model = per_table_model()
    feeds = run_cli.random_inputs(model, batch=6, pooling=4, seed=3)
    assert feeds["dense"].shape == (6, 5)
    for t, r in enumerate([9, 500]):
        idx, off = feeds[f"indices_{t}"], feeds[f"offsets_{t}"]
        assert off.shape == (6,) and off[0] == 0 and np.all(np.diff(off) >= 0) and off[-1] <= len(idx)
        assert idx.min() >= 0 and idx.max() < r
    (out,) = dd_ort.ort_session(model, device="cpu").run(feeds)
    assert out.shape == (6, 2 + 2 * DIM)
