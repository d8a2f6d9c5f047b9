"""Python-backend repositories and their request format without a server: the config parses with
Triton's schema and declares ragged inputs with dynamic batching, in both request forms (packed:
one ids/lengths/weights input for all tables; tables: per model input); merging requests and
splitting the outputs equals running each request alone (ONNX Runtime, and a per-sample reference
on random models and requests, where every broken request raises); triton-serve's user errors are
one line."""

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


@pytest.mark.parametrize("form", ["packed", "tables"])
@pytest.mark.parametrize("kw", [{}, dict(per_table=True, with_psw=True), dict(index_type=TensorProto.INT32,
                                                                            include_last_offset=1)])
def test_python_repo_config(tmp_path, ort_lib, kw, form):
    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="python", kind="cpu", max_batch_size=16,
                       preferred_batch_sizes=[4, 8], validate=True, request_form=form)
    cfg = parse(md)
    assert cfg.backend == "python" and cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert all(i.allow_ragged_batch for i in cfg.input)
    io = describe_onnx(onnx_path)
    names = [i.name for i in cfg.input]
    assert names[0] == "dense" and ("lengths" in names or "lengths_0" in names)
    assert not any(n.startswith("offsets") for n in names)
    if form == "packed":  # few inputs: dense, one ids (INT32 on the wire), one lengths, one weights
        want = [("dense", "TYPE_FP32"), ("ids", "TYPE_INT32"), ("lengths", "TYPE_INT32")]
        if kw.get("with_psw"):
            want.append(("weights", "TYPE_FP32"))
        assert [(i.name, pb.DataType.Name(i.data_type)) for i in cfg.input] == want
        assert "table-major" in (md / "README.md").read_text()
    assert json.loads((md / "1" / P.IO_FILE).read_text())["form"] == form
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


def reference_feeds(feeds_list: list[dict], spec: dict) -> dict:
    """The offsets-form model feeds of every request's samples as one batch, built sample by sample
    with Python lists (independent of model.py): per table, each request's bags in order."""
    out = {d["name"]: np.concatenate([f[d["name"]] for f in feeds_list]) for d in spec["dense"]}
    for bag in spec["bags"]:
        t, ilo = bag["tables"], bag["include_last_offset"]
        ids, weights, lengths = [], [], []
        for table in range(t):
            for f in feeds_list:
                b = f[spec["dense"][0]["name"]].shape[0]
                n = f[bag["indices"]].size
                if bag["offsets"] is None:
                    ls = [int(x) for x in f[bag["lengths"]]]
                    starts = list(np.cumsum([0] + ls)[:-1])
                else:
                    offs = [int(x) for x in f[bag["offsets"]]]
                    starts = offs[:t * b]
                    ends = offs[1:] if ilo else offs[1:] + [n]
                    ls = [e - s for s, e in zip(starts, ends)]
                for j in range(table * b, (table + 1) * b):
                    ids += list(f[bag["indices"]][starts[j]:starts[j] + ls[j]])
                    if bag["weights"]:
                        weights += list(f[bag["weights"]][starts[j]:starts[j] + ls[j]])
                    lengths.append(ls[j])
        out[bag["indices"]] = np.array(ids, dtype=bag["indices_dtype"])
        if bag["weights"]:
            out[bag["weights"]] = np.array(weights, dtype=feeds_list[0][bag["weights"]].dtype)
        if bag["offsets"] is None:
            out[bag["lengths"]] = np.array(lengths, dtype=bag["offsets_dtype"])
        else:
            offsets = np.cumsum([0] + lengths)
            out[bag["offsets"]] = np.array(offsets if ilo else offsets[:-1], dtype=bag["offsets_dtype"])
    return out


def assert_feeds_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].flags.c_contiguous, (name, got[name].dtype, w.dtype)
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.parametrize("form", P.FORMS)
@pytest.mark.parametrize("sizes", SIZES, ids=["four", "one", "empty-bags"])
@pytest.mark.parametrize("kw", MERGE_CASES)
def test_merge_then_split_equals_each_request_alone(tmp_path, kw, sizes, form):
    from dlrm_deploy.runtime.ort import ort_session

    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    io = describe_onnx(onnx_path)
    spec = P.io_spec(io, form)
    sess = ort_session(str(onnx_path), device="cpu")
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=b) for b, p in sizes]
    parsed = [model_py.parse_request(P.request_from_feeds(f, spec).get, spec) for f in feeds]
    merged = model_py.merge(parsed, spec)
    outs = dict(zip(sess.output_names, sess.run(merged)))
    for f, part in zip(feeds, model_py.split(outs, [p["b"] for p in parsed])):
        want = dict(zip(sess.output_names, sess.run(f)))
        for name in want:
            np.testing.assert_allclose(part[name][0], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", P.FORMS)
@pytest.mark.parametrize("kw", MERGE_CASES)
def test_merged_feeds_are_the_model_feeds(tmp_path, kw, form):
    """Merged feeds equal the offsets-form feeds of all samples concatenated by hand (types too);
    one request's ids reach the model without a copy where the wire type is the model's."""
    onnx_path = fake_dlrm(tmp_path / "m.onnx", **kw)
    io = describe_onnx(onnx_path)
    spec = P.io_spec(io, form)
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=b) for b, p in ((2, 3), (4, 1), (3, 5))]
    reqs = [P.request_from_feeds(f, spec) for f in feeds]
    merged = model_py.merge([model_py.parse_request(r.get, spec) for r in reqs], spec)
    assert_feeds_equal(merged, reference_feeds(feeds, spec))
    types = {t.name: numpy_dtype(t.elem_type) for t in io.inputs}
    assert all(merged[n].dtype == np.dtype(types[n]) for n in merged)
    one = model_py.merge([model_py.parse_request(reqs[0].get, spec)], spec)
    assert_feeds_equal(one, reference_feeds(feeds[:1], spec))
    for bag in spec["bags"]:
        sent = reqs[0][spec["packed"]["ids"] if form == "packed" else bag["indices"]]
        assert np.shares_memory(one[bag["indices"]], sent) == (sent.dtype == np.dtype(bag["indices_dtype"]))


# ---- property: random models and requests, pure numpy ------------------------------------------

def random_spec(rng, form: str) -> dict:
    """A request spec of a random model: 1-4 EmbeddingBag inputs of 1-3 tables each (a fused input
    when > 1), int32/int64 ids and offsets, include_last_offset, per-sample weights on some inputs,
    some inputs in lengths form (the model takes lengths itself)."""
    bags = []
    for k in range(int(rng.integers(1, 5))):
        lengths_model = bool(rng.random() < 0.2)
        idx_t, off_t = (int(rng.choice([6, 7])) for _ in range(2))
        weighted = bool(rng.random() < 0.4)
        bags.append({"indices": f"indices_{k}", "offsets": None if lengths_model else f"offsets_{k}",
                     "lengths": f"lengths_{k}", "weights": f"psw_{k}" if weighted else None,
                     "tables": int(rng.integers(1, 4)), "include_last_offset": 0 if lengths_model else int(rng.integers(0, 2)),
                     "indices_dtype": numpy_dtype(idx_t), "offsets_dtype": numpy_dtype(off_t),
                     "indices_type": idx_t, "offsets_type": off_t, "weights_type": 1 if weighted else None})
        bags[-1]["table_rows"] = [int(r) for r in rng.integers(1, 50, size=bags[-1]["tables"])]
    spec = {"form": form, "dense": [{"name": "dense"}], "bags": bags, "outputs": ["out"]}
    if form == "packed":
        spec["packed"] = P._packed_part(spec, spec["outputs"])
    return spec


def random_feeds(rng, spec: dict, b: int) -> dict:
    """Offsets-form (or lengths-form) model feeds of b samples: 0-5 ids per bag, ids in range."""
    feeds = {"dense": rng.standard_normal((b, 3)).astype(np.float32)}
    for bag in spec["bags"]:
        lengths = rng.integers(0, 6, size=bag["tables"] * b)
        ids = np.concatenate([rng.integers(0, rows, size=int(lengths[t * b:(t + 1) * b].sum()))
                              for t, rows in enumerate(bag["table_rows"])])
        feeds[bag["indices"]] = ids.astype(bag["indices_dtype"])
        if bag["offsets"] is None:
            feeds[bag["lengths"]] = lengths.astype(bag["offsets_dtype"])
        else:
            offs = np.concatenate([[0], np.cumsum(lengths)])
            feeds[bag["offsets"]] = (offs if bag["include_last_offset"] else offs[:-1]).astype(bag["offsets_dtype"])
        if bag["weights"]:
            feeds[bag["weights"]] = rng.standard_normal(ids.size).astype(np.float32)
    return feeds


def break_request(rng, req: dict, spec: dict) -> dict:
    """The request with one defect the format forbids (a missing input, a leading dim of 2, lengths
    that do not add up, of the wrong size, negative, float ids (packed), weights of the wrong size)."""
    req = dict(req)
    if spec["form"] == "packed":
        p = spec["packed"]
        lengths, ids, weights = p["lengths"], p["ids"], p["weights"]
    else:
        bag = spec["bags"][int(rng.integers(len(spec["bags"])))]
        lengths, ids, weights = bag["lengths"], bag["indices"], bag["weights"]
    kinds = ["missing", "leading", "sum", "size", "negative"] + (["float"] if spec["form"] == "packed" else []) + \
        (["weights"] if weights else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    name = {"missing": [ids, lengths, "dense"][int(rng.integers(3))], "leading": ids, "float": ids,
            "weights": weights}.get(kind, lengths)
    a = req[name]
    if kind == "missing":
        del req[name]
    elif kind == "leading":
        req[name] = np.concatenate([a, a])
    elif kind == "sum" and a.shape[1]:
        a = a.copy()
        a[0, int(rng.integers(a.shape[1]))] += int(rng.integers(1, 3))
        req[name] = a
    elif kind == "negative" and a.shape[1] >= 2:  # keeps the sum: only the sign check catches it
        a = a.copy()
        a[0, 1] += a[0, 0] + 1
        a[0, 0] = -1
        req[name] = a
    elif kind in ("sum", "negative", "size"):  # (no lengths to change: one too many)
        req[name] = np.concatenate([a, np.zeros((1, 1), a.dtype)], axis=1)
    elif kind == "float":
        req[name] = a.astype(np.float32)
    else:
        req[name] = np.concatenate([a, np.ones((1, 1), a.dtype)], axis=1)
    return req


@pytest.mark.parametrize("form", P.FORMS)
def test_property_random_merges_match_the_per_sample_reference(form):
    """Random models, random request counts and sizes (0-9 samples, 0-5 ids per bag), some requests
    broken: every broken request raises RequestError, and the merged feeds of the others equal the
    per-sample reference (values, types, contiguity); split gives each request its rows."""
    rng = np.random.default_rng(20)
    checked = broken = 0
    for case in range(150):
        spec = random_spec(rng, form)
        good, parsed = [], []
        for _ in range(int(rng.integers(1, 7))):
            feeds = random_feeds(rng, spec, int(rng.integers(0, 10)))
            req = P.request_from_feeds(feeds, spec)
            if rng.random() < 0.25:
                bad = break_request(rng, req, spec)
                with pytest.raises(model_py.RequestError):
                    model_py.parse_request(bad.get, spec)
                broken += 1
                continue
            good.append(feeds)
            parsed.append(model_py.parse_request(req.get, spec))
        if not good:
            continue
        merged = model_py.merge(parsed, spec)
        assert_feeds_equal(merged, reference_feeds(good, spec))
        sizes = [p["b"] for p in parsed]
        out = rng.standard_normal((sum(sizes), 2)).astype(np.float32)
        parts = model_py.split({"out": out}, sizes)
        starts = np.cumsum([0] + sizes)
        for k, part in enumerate(parts):
            np.testing.assert_array_equal(part["out"], out[None, starts[k]:starts[k + 1]])
        checked += 1
    assert checked > 100 and broken > 30


def test_packed_wire_type_and_int32_overflow(tmp_path):
    """INT32 ids on the wire unless a table has more than 2^31 rows (then INT64); ids that do not fit
    the wire type are refused by the client with one line, never wrapped."""
    io = describe_onnx(fake_dlrm(tmp_path / "m.onnx", per_table=True, with_psw=True))
    spec = P.io_spec(io, "packed")
    p = spec["packed"]
    assert (p["ids_dtype"], p["tables"], p["bag_tables"]) == ("int32", 3, [[0, 2], [2, 3]])
    assert [n for n, _, _ in P.request_inputs(io, spec)] == ["dense", "ids", "lengths", "weights"]
    feeds = sample_inputs(io, batch=3, pooling=2)
    feeds["indices_1"][0] = 2**31
    with pytest.raises(ValueError, match=r"^ids of 'indices_1' \(.*2147483648\) do not fit the served int32") as e:
        P.request_from_feeds(feeds, spec)
    assert "\n" not in str(e.value)
    io.bags[spec["bags"][1]["indices"] and 1]["table_rows"] = [2**31 + 5]
    wide = P.io_spec(io, "packed")
    assert wide["packed"]["ids_type"] == 7 and wide["packed"]["ids_dtype"] == "int64"
    req = P.request_from_feeds(feeds, wide)
    assert req["ids"].dtype == np.int64 and req["ids"].max() == 2**31
    io.bags[1]["table_rows"] = [2**31]  # ids up to 2^31 - 1: INT32 still addresses every row
    assert P.io_spec(io, "packed")["packed"]["ids_type"] == 6


def test_served_spec_finds_the_form(tmp_path):
    """The client finds the request form (and wire types) from the served config's inputs."""
    io = describe_onnx(fake_dlrm(tmp_path / "m.onnx", per_table=True))
    for form in P.FORMS:
        cfg = {"input": [{"name": n, "data_type": t} for n, t, _ in P.request_inputs(io, P.io_spec(io, form))]}
        assert P.served_spec(io, cfg)["form"] == form
    with pytest.raises(ValueError, match="neither request form"):
        P.served_spec(io, {"input": [{"name": "x", "data_type": "TYPE_FP32"}]})


def test_packed_names_avoid_model_names():
    spec = {"form": "packed", "dense": [{"name": "ids"}], "outputs": ["lengths"], "bags": [
        {"indices": "i", "offsets": "o", "lengths": "l", "weights": None, "tables": 1, "table_rows": [5],
         "include_last_offset": 0, "indices_dtype": "int64", "offsets_dtype": "int64", "weights_type": None}]}
    p = P._packed_part(spec, spec["outputs"])
    assert (p["ids"], p["lengths"], p["weights"]) == ("ids_", "lengths_", None)
    spec["bags"].append({**spec["bags"][0], "weights": "w", "weights_type": 10})
    spec["bags"][0].update(weights="w0", weights_type=1)
    with pytest.raises(ValueError, match="request-form tables"):
        P._packed_part(spec, spec["outputs"])


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


def test_request_form_option(tmp_path, ort_lib, capsys):
    """triton-repo --request-form: tables/packed for the python backend; for another backend a
    one-line error."""
    from dlrm_deploy.cli import main

    onnx_path = fake_dlrm(tmp_path / "m.onnx", per_table=True)
    assert main(["triton-repo", str(onnx_path), "--backend", "python", "--kind", "cpu", "--out", str(tmp_path / "r"),
                 "--request-form", "tables"]) == 0
    assert json.loads((tmp_path / "r" / "dlrm" / "1" / P.IO_FILE).read_text())["form"] == "tables"
    assert "lengths_0" in [i.name for i in parse(tmp_path / "r" / "dlrm").input]
    capsys.readouterr()
    assert main(["triton-repo", str(onnx_path), "--backend", "onnxruntime", "--out", str(tmp_path / "o"),
                 "--request-form", "packed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python and native backends" in err and "Traceback" not in err


def test_native_repo_config(tmp_path, ort_lib, monkeypatch, capsys):
    """--backend native: the python backend's repository for our C++ backend: backend "dlrm_deploy",
    no model.py, the ONNX Runtime library named in the config ($DLRM_DEPLOY_ONNXRUNTIME_LIBRARY or
    --onnxruntime-library, else this environment's); the packed form only; a server for it needs no
    python-backend stub environment. Misuse is a one-line error."""
    from dlrm_deploy.cli import main

    onnx_path = fake_dlrm(tmp_path / "m.onnx", per_table=True, with_psw=True)
    md = T.triton_repo(onnx_path, tmp_path / "repo", backend="native", kind="cpu", validate=True)
    cfg = parse(md)
    assert cfg.backend == "dlrm_deploy" and cfg.max_batch_size == 64 and cfg.HasField("dynamic_batching")
    assert [i.name for i in cfg.input] == ["dense", "ids", "lengths", "weights"]
    library = cfg.parameters["onnxruntime_library"].string_value
    assert pathlib.Path(library).is_file() and "libonnxruntime.so" in library
    assert not (md / "1" / "model.py").exists() and (md / "1" / "model.onnx").is_file()
    assert "native backend `dlrm_deploy`" in (md / "README.md").read_text()
    assert json.loads((md / "1" / P.IO_FILE).read_text())["form"] == "packed"
    monkeypatch.setenv(S.STUB_ENV_VAR, str(tmp_path / "no-env"))
    assert S.TritonServer(tmp_path / "repo").stub_env is None  # native only: no stub environment needed
    monkeypatch.setenv(P.ORT_LIBRARY_VAR, "/opt/ort/lib/libonnxruntime.so")
    md = T.triton_repo(onnx_path, tmp_path / "repo2", backend="native", kind="cpu")
    assert parse(md).parameters["onnxruntime_library"].string_value == "/opt/ort/lib/libonnxruntime.so"
    assert main(["triton-repo", str(onnx_path), "--backend", "native", "--kind", "cpu", "--out", str(tmp_path / "r3"),
                 "--onnxruntime-library", "/x/libonnxruntime.so.1"]) == 0
    assert parse(tmp_path / "r3" / "dlrm").parameters["onnxruntime_library"].string_value == "/x/libonnxruntime.so.1"
    capsys.readouterr()
    for argv, needle in ((["--backend", "native", "--request-form", "tables"], "packed request form only"),
                         (["--backend", "python", "--onnxruntime-library", "/x.so"], "for the native backend")):
        assert main(["triton-repo", str(onnx_path), "--kind", "cpu", "--out", str(tmp_path / "r4"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    cfg_path = tmp_path / "r3" / "dlrm" / "config.pbtxt"  # a native repository written in the tables form
    io_path = tmp_path / "r3" / "dlrm" / "1" / P.IO_FILE
    io_path.write_text(io_path.read_text().replace('"form": "packed"', '"form": "tables"'))
    with pytest.raises(ValueError, match="packed request form"):
        T.validate_repo(cfg_path.parent)
