"""A real Triton server (tritonserver 2.51 from the nvidia-pytriton wheel, python backend) serving a
python-backend repository of a small exported DLRM on loopback, once in each request form (`dlrm`:
packed, the default; `dlrm_tables`: one input per model input): HTTP and gRPC answers equal local
ONNX Runtime per request, bad requests get their own one-line error while the server stays ready,
concurrent clients of different-sized requests get exactly their rows back while Triton merges
requests, and the client script and triton-bench run against it. CPU only; `make venv` installs
the server."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dlrm_deploy.runtime import triton_python as P
from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs
from dlrm_deploy.runtime.triton_client import infer_feeds, make_infer_inputs

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = "dlrm"  # packed request form (the default)
TABLES = "dlrm_tables"  # the same model in the tables form
NATIVE = "dlrm_native"  # the packed form in our C++ backend (backend "dlrm_deploy")
FORM = {MODEL: "packed", TABLES: "tables", NATIVE: "packed"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, onnx path, ModelIO, local ORT session): the repository served for the whole module,
    the server always stopped."""
    from dlrm_deploy import export
    from dlrm_deploy.runtime.ort import ort_session
    from dlrm_deploy.runtime.triton import triton_repo
    from dlrm_deploy.runtime.triton_server import TritonServer

    d = tmp_path_factory.mktemp("triton")
    onnx_path = d / "dlrm.onnx"
    export.export_onnx(export.DLRM("small"), export.make_inputs("small", batch=4), onnx_path)
    # A long queue delay so that concurrent requests on 2 CPU cores reliably meet in the batcher.
    for name, form in FORM.items():
        triton_repo(onnx_path, d / "repo", backend="native" if name == NATIVE else "python", name=name, kind="cpu",
                    max_batch_size=32, max_queue_delay_us=20000, validate=True,
                    request_form=form if name == TABLES else None)
    server = TritonServer(d / "repo", timeout_s=90, profile_dir=d / "profile")  # model.py logs its steps
    try:
        server.start()
        yield server, onnx_path, describe_onnx(onnx_path), ort_session(str(onnx_path), device="cpu")
    finally:
        server.close()


def local(sess, feeds):
    return dict(zip(sess.output_names, sess.run(feeds)))


def stats(server, model=MODEL, requests_at_least: int = 0) -> dict:
    """The model's request and execution counts. The server counts a request after its response
    has gone out, so a count read right after the last response can lag: with requests_at_least,
    read again (up to 10 s) until that many requests are counted."""
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(server.grpc_url)
    deadline = time.monotonic() + 10.0
    while True:
        s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        # zero counts are left out of the JSON
        got = {"requests": int(s["inference_stats"]["success"].get("count", 0)),
               "executions": int(s.get("execution_count", 0))}
        if got["requests"] >= requests_at_least or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.parametrize("model", [MODEL, TABLES, NATIVE])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_equal_local_onnxruntime(served, protocol, model):
    server, onnx_path, io, sess = served
    url = server.http_url if protocol == "http" else server.grpc_url
    for i, (b, pooling) in enumerate([(1, 1), (7, 20), (33, 5)]):
        feeds = sample_inputs(io, batch=b, pooling=pooling, seed=10 + i)
        got = infer_feeds(feeds, model, io, url=url, protocol=protocol)
        want = local(sess, feeds)
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape == (b, 1)
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)


def send_together(server, model, requests) -> list:
    """Sends every request at once over gRPC (so the batcher merges them); per request its output or
    the InferenceServerException."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(k):
        client = tg.InferenceServerClient(server.grpc_url)
        barrier.wait()
        try:
            results[k] = client.infer(model, make_infer_inputs(requests[k], "grpc")).as_numpy("sigmoid")
        except InferenceServerException as e:
            results[k] = e

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def one_line_error(result, *needles) -> str:
    from tritonclient.utils import InferenceServerException

    assert isinstance(result, InferenceServerException), result
    msg = result.message()
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


@pytest.mark.parametrize("model", [MODEL, TABLES, NATIVE])
def test_bad_requests_get_their_own_errors(served, model):
    """Sent together with good requests: an id outside its table, ids that wrapped around INT32
    (negative) or sit at its top, lengths that do not add up, negative lengths; then alone: the
    wrong ids type, a missing input. Each gets its own one-line error, the good ones their rows,
    and the server and model stay ready."""
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    server, onnx_path, io, sess = served
    spec = P.io_spec(io, FORM[model])
    good = [sample_inputs(io, batch=b, pooling=4, seed=b) for b in (3, 5, 8)]
    bad_ids = []
    for value in (10**6, -7, 2**31 - 1):  # table 2 has 3000 rows
        f = sample_inputs(io, batch=4, pooling=4, seed=99)
        f["indices_2"][3] = value
        bad_ids.append(f)
    req = lambda f: P.request_from_feeds(f, spec)  # noqa: E731
    lengths = spec["packed"]["lengths"] if FORM[model] == "packed" else "lengths_1"
    bad_len = req(sample_inputs(io, batch=2, pooling=3, seed=7))
    bad_len[lengths] = bad_len[lengths] + 1  # no longer adds up to the ids sent
    negative = req(sample_inputs(io, batch=2, pooling=3, seed=8))
    negative[lengths] = negative[lengths].copy()
    negative[lengths][0, 1] += negative[lengths][0, 0] + 1
    negative[lengths][0, 0] = -1  # same sum
    results = send_together(server, model, [req(f) for f in good] + [req(f) for f in bad_ids] + [bad_len, negative])
    for feeds, got in zip(good, results[:3]):
        assert not isinstance(got, Exception), got
        np.testing.assert_allclose(got[0], local(sess, feeds)["sigmoid"], rtol=1e-5, atol=1e-6)
    # the packed form's model takes every table's ids in one input (export/packed_inputs.py): the
    # message names the table and the position in the request's ids
    where = "position 35 of indices of table 2" if FORM[model] == "packed" else "indices_2"
    for value, got in zip((10**6, -7, 2**31 - 1), results[3:6]):
        one_line_error(got, "out of range", where, "3000 rows", str(value))
    one_line_error(results[6], lengths, "adds up to")
    one_line_error(results[7], lengths, "negative")
    wrong_type = req(good[0])
    ids = spec["packed"]["ids"] if FORM[model] == "packed" else "indices_0"
    wrong_type[ids] = wrong_type[ids].astype(np.int64 if wrong_type[ids].dtype == np.int32 else np.int32)
    missing = {k: v for k, v in req(good[0]).items() if k != ids}
    http = th.InferenceServerClient(server.http_url)  # over HTTP too, then the server is still fine
    for bad, needle in ((wrong_type, "data-type"), (missing, "expected")):
        with pytest.raises(InferenceServerException) as e:
            http.infer(model, make_infer_inputs(bad, "http"))
        one_line_error(e.value, needle)
    with pytest.raises(InferenceServerException, match="out of range"):
        http.infer(model, make_infer_inputs(req(bad_ids[0]), "http"))
    assert http.is_server_ready() and http.is_model_ready(model)
    got = infer_feeds(good[0], model, io, url=server.http_url, protocol="http")["sigmoid"]
    np.testing.assert_allclose(got, local(sess, good[0])["sigmoid"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", [MODEL, TABLES, NATIVE])
def test_concurrent_clients_get_their_own_rows_from_merged_executions(served, model):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    server, onnx_path, io, sess = served
    spec = P.io_spec(io, FORM[model])
    rng = np.random.default_rng(5)
    jobs = [(k, int(rng.integers(1, 48)), int(rng.integers(1, 12))) for k in range(48)]
    wanted = {}
    for k, b, pooling in jobs:
        feeds = sample_inputs(io, batch=b, pooling=pooling, seed=1000 + k)
        wanted[k] = (P.request_from_feeds(feeds, spec), local(sess, feeds)["sigmoid"])
    got, failures = {}, []
    before = stats(server, model)

    def client_thread(t):
        protocol = "grpc" if t % 2 else "http"
        mod = tg if protocol == "grpc" else th
        client = mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
        for k, _, _ in jobs[t::8]:
            try:
                got[k] = client.infer(model, make_infer_inputs(wanted[k][0], protocol)).as_numpy("sigmoid")
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(f"request {k}: {e}")

    threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    for k, b, _ in jobs:
        assert got[k].shape == (1, b, 1), (k, got[k].shape)
        np.testing.assert_allclose(got[k][0], wanted[k][1], rtol=1e-5, atol=1e-6, err_msg=f"request {k}")
    after = stats(server, model, requests_at_least=before["requests"] + len(jobs))
    requests, executions = after["requests"] - before["requests"], after["executions"] - before["executions"]
    assert requests == len(jobs)
    assert executions < requests, f"no merged executions: {executions} executions for {requests} requests"


@pytest.mark.parametrize("protocol,model", [("grpc", MODEL), ("http", TABLES)])
def test_client_script(served, protocol, model):
    server, onnx_path, io, sess = served
    url = server.http_url if protocol == "http" else server.grpc_url
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "triton_client.py"), "--onnx", str(onnx_path),
                        "--model", model, "--protocol", protocol, "--url", url, "--batch", "16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sigmoid" in r.stdout and "yes" in r.stdout and f"{FORM[model]} request form" in r.stdout


def test_client_script_one_line_error_for_a_missing_model(served):
    server, onnx_path, io, sess = served
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "triton_client.py"), "--onnx", str(onnx_path),
                        "--model", "nope", "--protocol", "http", "--url", server.http_url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("model", [MODEL, NATIVE])
def test_bench_tiny_sweep(served, tmp_path, model):
    import argparse

    from dlrm_deploy.runtime import triton_bench

    server, onnx_path, io, sess = served
    p = argparse.ArgumentParser()
    triton_bench.add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--model", model, "--onnx", str(onnx_path), "--grpc-url", server.grpc_url,
                         "--http-url", server.http_url, "--concurrency", "1,4", "--batch", "8:32",
                         "--pooling", "2:10", "--pool", "4", "--duration", "1", "--warmup", "0.2",
                         "--out", str(out)])
    assert triton_bench.main(args) == 0
    result = json.loads(out.read_text())
    assert result["backend"] == ("dlrm_deploy" if model == NATIVE else "python")
    assert out.with_suffix(".png").stat().st_size > 1000
    assert result["checked"] == {model: {"grpc": 2, "http": 2}}  # answers compared before timing
    assert result["request_form"] == "packed" and result["request_inputs"] == 3
    rows = {(r["protocol"], r["concurrency"]): r for r in result["rows"]}
    assert set(rows) == {("grpc", 1), ("grpc", 4), ("http", 1), ("http", 4)}
    for r in rows.values():
        assert r["errors"] == 0 and r["requests"] > 0 and r["samples_per_s"] > 0
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["server_requests"] >= r["requests"] and r["server_compute_ms"] > 0
    assert rows[("grpc", 4)]["requests_per_execution"] > 1  # 4 clients, 20 ms queue delay: merged


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", [MODEL, TABLES])
def test_prebuilt_requests_answer_like_local_onnxruntime(served, model, protocol):
    """triton-bench's default sender (requests serialised once, sent as bytes: a gRPC channel, or
    binary-tensor bodies on one keep-alive HTTP connection) gets the same answers as the model run
    locally, twice over the same connection, and the server's one-line error for a bad id, after
    which the connection still serves."""
    from tritonclient.http import InferenceServerClient

    from dlrm_deploy.runtime import triton_bench as B

    server, onnx_path, io, sess = served
    spec = P.io_spec(io, FORM[model])
    feeds = [sample_inputs(io, batch=b, pooling=p, seed=50 + b) for b, p in ((3, 2), (17, 9))]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    target = B._Target(protocol, url, model, [(f["dense"].shape[0], P.request_from_feeds(f, spec))
                                              for f in feeds], ["sigmoid"], "prebuilt")
    send = target.send_function()

    def sigmoid(answer):
        if protocol == "grpc":
            return np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(list(answer.outputs[0].shape))
        header_length, payload = answer
        return InferenceServerClient.parse_response_body(payload, header_length=header_length).as_numpy("sigmoid")

    for _round in range(2):
        for f, (b, data) in zip(feeds, target.inputs):
            got = sigmoid(send(data))
            assert got.shape == (1, b, 1)
            np.testing.assert_allclose(got[0], local(sess, f)["sigmoid"], rtol=1e-6, atol=1e-7)
    bad_feeds = sample_inputs(io, batch=2, pooling=2, seed=3)
    bad_feeds["indices_1"] = bad_feeds["indices_1"] + 10**6
    bad = P.request_from_feeds(bad_feeds, spec)
    with pytest.raises(RuntimeError, match="out of range"):
        send(B.grpc_request_bytes(model, bad, ["sigmoid"]) if protocol == "grpc" else
             B.http_request_body(bad, ["sigmoid"]))
    assert sigmoid(send(target.inputs[0][1])).shape == (1, 3, 1)


def test_bench_client_processes(served, tmp_path):
    """--processes 2: the clients run in two client processes, their results merged into one row
    (against the tables form: triton-bench sends the form the served config takes)."""
    import argparse

    from dlrm_deploy.runtime import triton_bench

    server, onnx_path, io, sess = served
    p = argparse.ArgumentParser()
    triton_bench.add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--model", TABLES, "--onnx", str(onnx_path), "--grpc-url", server.grpc_url,
                         "--protocol", "grpc", "--concurrency", "1,4", "--processes", "2", "--batch", "8:32",
                         "--pooling", "2:10", "--pool", "4", "--duration", "1", "--warmup", "0.2",
                         "--out", str(out)])
    assert triton_bench.main(args) == 0
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["sender"] == "prebuilt" and result["instances"] == 1
    assert result["request_form"] == "tables" and result["request_inputs"] == 9  # dense + 4 x (ids, lengths)
    rows = {r["concurrency"]: r for r in result["rows"]}
    for r in rows.values():
        assert r["processes"] == 2 and r["errors"] == 0 and r["requests"] > 0
        assert r["server_requests"] >= r["requests"] * 0.9 and 0 < r["server_busy"] <= 1.05
        assert r["client_cpu"] > 0 and r["client_cpu_max"] <= r["client_cpu"]
    assert rows[4]["requests_per_execution"] > 1  # 4 clients over 2 processes still meet in the batcher


def test_model_py_profile_log(served):
    """model.py's timing log (triton-serve --profile): one line per execution, steps that add up."""
    from dlrm_deploy.runtime import triton_bench as B

    server, onnx_path, io, sess = served
    infer_feeds(sample_inputs(io, batch=5, pooling=3, seed=1), MODEL, io, url=server.grpc_url, protocol="grpc")
    s = B.profile_summary(server.profile_dir)
    assert s["executions"] >= 1 and s["requests"] >= s["executions"]
    per = s["ms_per_execution"]
    assert all(per[k] >= 0 for k in B.PROFILE_STEPS) and per["run"] > 0
    parts = sum(per[k] for k in ("fetch", "parse", "merge", "run", "split", "respond"))
    assert parts <= per["execute"] * 1.01 + 1e-3


def test_bench_unknown_model_is_one_line(served, tmp_path):
    server, onnx_path, io, sess = served
    r = subprocess.run([sys.executable, "-m", "dlrm_deploy.cli", "triton-bench", "--onnx", str(onnx_path), "--model", "nope",
                        "--grpc-url", server.grpc_url, "--protocol", "grpc", "--concurrency", "1", "--processes", "2",
                        "--duration", "1", "--out", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bench_compares_the_request_forms_interleaved(served, tmp_path):
    """--model dlrm,dlrm_tables --rounds 2 --profile DIR: both forms measured in turn at each point,
    median rows per model with model.py's and the python backend's own time per request."""
    import argparse

    from dlrm_deploy.runtime import triton_bench

    server, onnx_path, io, sess = served
    p = argparse.ArgumentParser()
    triton_bench.add_arguments(p)
    out = tmp_path / "ab.json"
    args = p.parse_args(["--model", f"{MODEL},{TABLES}", "--onnx", str(onnx_path), "--grpc-url", server.grpc_url,
                         "--protocol", "grpc", "--concurrency", "3", "--rounds", "2", "--batch", "8:16",
                         "--pooling", "2:6", "--pool", "4", "--duration", "0.6", "--warmup", "0.2",
                         "--profile", str(server.profile_dir), "--out", str(out)])
    assert triton_bench.main(args) == 0
    result = json.loads(out.read_text())
    assert result["model"] == [MODEL, TABLES] and result["rounds"] == 2
    assert {m: v["request_form"] for m, v in result["models"].items()} == {m: FORM[m] for m in (MODEL, TABLES)}
    assert [r["model"] for r in result["rows"]] == [MODEL, TABLES]
    assert sorted((r["model"], r["round"]) for r in result["round_rows"]) == sorted(
        (m, k) for m in (MODEL, TABLES) for k in range(2))
    for r in result["rows"]:
        assert r["rounds"] == 2 and r["errors"] == 0 and r["requests"] > 0
        assert r["model_py_ms_per_request"] > 0 and r["backend_ms_per_request"] is not None
        assert r["profile"]["executions"] >= 2 and r["profile"]["ms_per_request"]["execute"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000


def test_serve_command_stops_its_server_on_sigterm(served, tmp_path):
    """dlrm-deploy triton-serve stopped with SIGTERM (kill, a process manager, a shell trap) stops the
    tritonserver it started, which runs in a session of its own."""
    import os
    import signal
    import time

    server = served[0]
    proc = subprocess.Popen([sys.executable, "-m", "dlrm_deploy.cli", "triton-serve", str(server.repo), "--http-port", "0",
                             "--grpc-port", "0", "--metrics-port", "0", "--log", str(tmp_path / "s.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "tritonserver ready (pid N), ..." once it serves
        assert "ready (pid" in line, line + proc.stderr.read()
        pid = int(line.split("(pid ", 1)[1].split(")")[0])
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"tritonserver {pid} still runs after triton-serve got SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bench_refuses_to_time_a_server_that_answers_wrongly(served, tmp_path):
    """Told the served model came from another ONNX file (same inputs, other weights), triton-bench's
    check finds the answers differ and times nothing."""
    import torch

    from dlrm_deploy import export
    from dlrm_deploy.runtime import triton_bench as B

    server, onnx_path, io, sess = served
    other = tmp_path / "other.onnx"
    model = export.DLRM("small")
    with torch.no_grad():
        for w in model.parameters():
            w.add_(0.05)
    export.export_onnx(model, export.make_inputs("small", batch=4), other)
    with pytest.raises(ValueError, match=r"answered request 0 .* differently from local ONNX Runtime.*nothing was timed"):
        B.sweep(other, NATIVE, {"grpc": server.grpc_url}, [1], B.Workload((4, 8), (2, 5), 2, 0), duration_s=0.5,
                warmup_s=0.1, progress=lambda line: None)


@pytest.mark.parametrize("model", [MODEL, NATIVE])
def test_a_request_without_samples(served, model):
    """A request of 0 samples, alone and among others: no rows back (or its own one-line error),
    the other requests their rows, and the model stays ready."""
    import tritonclient.http as th

    server, onnx_path, io, sess = served
    spec = P.io_spec(io, "packed")
    good = sample_inputs(io, batch=5, pooling=3, seed=4)
    empty = P.request_from_feeds(sample_inputs(io, batch=1, pooling=3, seed=5), spec)
    empty = {k: v[:, :0] for k, v in empty.items()}  # [1, 0, ...] dense, no lengths, no ids
    results = send_together(server, model, [P.request_from_feeds(good, spec), empty])
    np.testing.assert_allclose(results[0][0], local(sess, good)["sigmoid"], rtol=1e-5, atol=1e-6)
    if isinstance(results[1], Exception):
        one_line_error(results[1])
    else:
        assert results[1].shape == (1, 0, 1)
    assert th.InferenceServerClient(server.http_url).is_model_ready(model)
