"""Python-backend repositories and their request format without a server: the config parses with
Triton's schema and declares ragged inputs with dynamic batching; merging requests and splitting
the outputs equals running each request alone; triton-serve's user errors are one line."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from onnx import TensorProto

from dlrm_deploy.runtime import triton as T
from dlrm_deploy.runtime import triton_python as P
from dlrm_deploy.runtime.triton_config import numpy_dtype
from dlrm_deploy.runtime import triton_server as S
from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_triton import fake_dlrm, parse  # noqa: E402

spec_ = importlib.util.spec_from_file_location("model_py", P.MODEL_TEMPLATE)
model_py = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(model_py)


@pytest.fixture
def ort_lib():
    try:
        return pathlib.Path(T.triton_repo.__globals__["_find_library"]("onnxruntime"))
    except FileNotFoundError as e:
        pytest.skip(f"custom-op library not built: {e}")


@pytest.mark.parametrize("kw", [{}, dict(per_table=True, with_psw=True), dict(index_type=TensorProto.INT32,
                                                                            include_last_offset=1)])
def test_python_repo_config(tmp_path, ort_lib, kw):
    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="python", kind="cpu", max_batch_size=16,
                       preferred_batch_sizes=[4, 8], validate=True)
    cfg = parse(md)
    assert cfg.backend == "python" and cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert all(i.allow_ragged_batch for i in cfg.input)
    io = describe_onnx(onnx_path)
    names = [i.name for i in cfg.input]
    assert names[0] == "dense" and ("lengths" in names or "lengths_0" in names)
    assert not any(n.startswith("offsets") for n in names)
    assert [o.name for o in cfg.output] == [t.name for t in io.outputs]
    for f in ("model.py", "model.onnx", P.IO_FILE):
        assert (md / "1" / f).is_file()
    assert "Request format" in (md / "README.md").read_text()
    cfg_path = md / "config.pbtxt"
    cfg_path.write_text(cfg_path.read_text().replace("allow_ragged_batch: true", "allow_ragged_batch: false", 1))
    with pytest.raises(ValueError, match="allow_ragged_batch"):
        T.validate_repo(md)


MERGE_CASES = [{}, dict(per_table=True, with_psw=True), dict(include_last_offset=1),
               dict(index_type=TensorProto.INT32, per_table=True, include_last_offset=1)]
SIZES = [((1, 3), (5, 1), (2, 7), (9, 2)), ((6, 4),), ((3, 0), (4, 2))]


@pytest.mark.parametrize("sizes", SIZES, ids=["four", "one", "empty-bags"])
@pytest.mark.parametrize("kw", MERGE_CASES)
def test_merge_then_split_equals_each_request_alone(tmp_path, kw, sizes):
    from dlrm_deploy.runtime.ort import ort_session

    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    io = describe_onnx(onnx_path)
    spec = P.io_spec(io)
    sess = ort_session(str(onnx_path), device="cpu")
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=b) for b, p in sizes]
    parsed = [model_py.parse_request(P.request_from_feeds(f, spec).get, spec) for f in feeds]
    merged = model_py.merge(parsed, spec)
    outs = dict(zip(sess.output_names, sess.run(merged)))
    for f, part in zip(feeds, model_py.split(outs, [p["b"] for p in parsed])):
        want = dict(zip(sess.output_names, sess.run(f)))
        for name in want:
            np.testing.assert_allclose(part[name][0], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", MERGE_CASES)
def test_merged_feeds_are_the_model_feeds(tmp_path, kw):
    """Merged feeds equal the offsets-form feeds of all samples concatenated by hand (types too);
    one request's ids reach the model without a copy."""
    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    io = describe_onnx(onnx_path)
    spec = P.io_spec(io)
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=b) for b, p in ((2, 3), (4, 1), (3, 5))]
    reqs = [P.request_from_feeds(f, spec) for f in feeds]
    merged = model_py.merge([model_py.parse_request(r.get, spec) for r in reqs], spec)
    types = {t.name: t.elem_type for t in io.inputs}
    for bag in spec["bags"]:
        t, sizes = bag["tables"], [f["dense"].shape[0] for f in feeds]
        ids, lens = [], []
        for table in range(t):  # table-major: table 0 of every request, then table 1, ...
            for r, b in zip(reqs, sizes):
                all_lens = r[bag["lengths"]][0].astype(np.int64)
                start = int(all_lens[:table * b].sum())
                n = int(all_lens[table * b:(table + 1) * b].sum())
                ids.append(r[bag["indices"]][0][start:start + n])
                lens.append(all_lens[table * b:(table + 1) * b])
        want_off = np.concatenate([[0], np.cumsum(np.concatenate(lens))])
        if not bag["include_last_offset"]:
            want_off = want_off[:-1]
        np.testing.assert_array_equal(merged[bag["indices"]], np.concatenate(ids))
        np.testing.assert_array_equal(merged[bag["offsets"]], want_off)
        for name in (bag["indices"], bag["offsets"]):
            assert merged[name].dtype == np.dtype(numpy_dtype(types[name])) and merged[name].flags.c_contiguous
    one = model_py.merge([model_py.parse_request(reqs[0].get, spec)], spec)
    for bag in spec["bags"]:
        assert np.shares_memory(one[bag["indices"]], reqs[0][bag["indices"]])


def test_request_format_errors(tmp_path):
    io = describe_onnx(fake_dlrm(tmp_path / "m.onnx"))
    spec = P.io_spec(io)
    req = P.request_from_feeds(sample_inputs(io, batch=3, pooling=2), spec)
    cases = [({"dense": req["dense"][0]}, "leading dim must be 1"),
             ({"lengths": req["lengths"][:, :-1]}, "need 9"),
             ({"lengths": req["lengths"] + 1}, "adds up to"),
             ({"indices": None}, "missing")]
    for change, msg in cases:
        bad = {**req, **change}
        with pytest.raises(model_py.RequestError, match=msg):
            model_py.parse_request(bad.get, spec)
    text = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running EmbeddingBag node. "
            "Name:'n' Status Message: dlrm_deploy::EmbeddingBag: index 7 is out of range\n")
    assert model_py.one_line(text) == "dlrm_deploy::EmbeddingBag: index 7 is out of range"


def test_bench_helpers_without_a_server():
    """triton-bench's pre-serialised gRPC request holds the arrays, the instance count and the
    client-bound verdict, the profile summary of model.py's timing log."""
    from tritonclient.grpc import service_pb2

    from dlrm_deploy.runtime import triton_bench as B

    arrays = {"dense": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "ids": np.array([[5, 7, 9]], np.int64)}
    req = service_pb2.ModelInferRequest.FromString(B.grpc_request_bytes("m", arrays, ["out"]))
    assert req.model_name == "m" and [o.name for o in req.outputs] == ["out"]
    assert [(i.name, i.datatype, list(i.shape)) for i in req.inputs] == [("dense", "FP32", [1, 2, 3]),
                                                                       ("ids", "INT64", [1, 3])]
    np.testing.assert_array_equal(np.frombuffer(req.raw_input_contents[1], np.int64), [5, 7, 9])
    assert B.instance_count({"instance_group": [{"count": 2, "gpus": [0, 1]}, {"count": 1}]}) == 5
    assert B.instance_count({}) == 1
    row = dict(concurrency=64, client_cpu_max=0.5, server_queue_ms=1.0, server_compute_ms=2.0, server_busy=0.3,
               mean_ms=30.0)
    assert "busy 30%" in B.client_bound(row, instances=2)
    assert B.client_bound({**row, "server_busy": 0.9}, instances=2) is None
    assert B.client_bound({**row, "concurrency": 2}, instances=2) is None
    assert "97% of a core" in B.client_bound({**row, "server_busy": 0.9, "client_cpu_max": 0.97}, instances=2)
    with pytest.raises(ValueError, match="processes"):
        B.LoadGenerator("grpc", "127.0.0.1:1", "m", [], ["out"], processes=0)


def test_profile_summary(tmp_path):
    from dlrm_deploy.runtime import triton_bench as B

    log = tmp_path / "dlrm_0.1.jsonl"
    line = lambda r, x: json.dumps({"requests": r, **{k: x for k in B.PROFILE_STEPS}})  # noqa: E731
    log.write_text(line(1, 0.001) + "\n" + line(3, 0.003) + "\n")
    s = B.profile_summary(tmp_path)
    assert s["executions"] == 2 and s["requests"] == 4 and s["requests_per_execution"] == 2
    assert s["ms_per_execution"]["run"] == pytest.approx(2.0) and s["ms_per_request"]["merge"] == pytest.approx(1.0)
    marks = B.profile_marks(tmp_path)
    log.write_text(log.read_text() + line(2, 0.004) + "\n")
    s = B.profile_summary(tmp_path, since=marks)
    assert s["executions"] == 1 and s["ms_per_request"]["run"] == pytest.approx(2.0)
    assert "merge 2.000" in B.format_profile(s)
    assert B.profile_summary(tmp_path / "none")["executions"] == 0


def test_serve_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from dlrm_deploy.cli import main

    assert main(["triton-serve", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    monkeypatch.setenv(S.STUB_ENV_VAR, str(tmp_path / "no-env"))
    assert main(["triton-serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'numpy<2' in err and "--target" in err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="nvidia-pytriton is not installed"):
        S.find_install()


def test_python_repo_without_merging(tmp_path, ort_lib):
    """--batching none: the baseline for measurements, one request per execution."""
    md = T.triton_repo(fake_dlrm(tmp_path / "m.onnx"), tmp_path / "repo", backend="python", kind="cpu",
                       batching="none", validate=True)
    cfg = parse(md)
    assert cfg.max_batch_size == 1 and not cfg.HasField("dynamic_batching")
