"""Load test of a served model (``dlrm-deploy triton-bench``): a concurrency sweep over gRPC and/or HTTP.

Requests are valid for the model (``model_io.sample_inputs``: ids inside each table) with samples per
request and mean lookups per bag drawn from the given ranges, sent in the form the served model takes
(``triton_client``). Each point runs `concurrency` clients (threads, spread over `processes` client
processes) for `duration_s` after `warmup_s`, and reports throughput (requests/s, samples/s), latency
percentiles (p50/p90/p99, client side, requests completed inside the window) and, from Triton's
statistics API (difference over the window), the server's average queue and compute time per
request, the requests per model execution (> 1: dynamic batching merged requests) and how busy the
model instances were; plus the clients' CPU use and a "client-bound" verdict when the clients, not
the server, probably limited the throughput. Requests are serialised once per distinct request and
sent as bytes (gRPC: ``grpc_request_bytes``; HTTP: ``http_request_body``, binary tensors, one
keep-alive connection per client); ``sender="tritonclient"`` calls ``client.infer`` instead.
Several models (e.g. one per request form) are measured interleaved, point by point, in alternating
order over `rounds` (medians reported), so that a shared machine's load hits them alike; with the
server's model.py timing log, each row also gets model.py's and the python backend's own time per
request. Results go to JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import sys
import threading
import time

import numpy as np


@dataclasses.dataclass
class Workload:
    """What the clients send: `pool` distinct requests, samples and pooling uniform in the ranges."""

    batch: tuple[int, int] = (64, 64)  # samples per request, inclusive range
    pooling: tuple[int, int] = (20, 150)  # mean lookups per bag, inclusive range
    pool: int = 16
    seed: int = 0


def workload_feeds(io, work: Workload, count: int):
    """The workload's first `count` requests as ``(samples, model feeds)`` (deterministic in work.seed)."""
    from .model_io import sample_inputs

    rng = np.random.default_rng(work.seed)
    for i in range(count):
        b = int(rng.integers(work.batch[0], work.batch[1] + 1))
        p = int(rng.integers(work.pooling[0], work.pooling[1] + 1))
        yield b, sample_inputs(io, batch=b, pooling=p, seed=work.seed + i)


def make_requests(io, work: Workload, spec: dict | None) -> list[tuple[int, dict]]:
    """``[(samples, request arrays)]``: valid requests of the workload, in the served model's form
    (`spec`: the ragged request spec, packed or tables, of a python- or native-backend model, from
    triton_client.request_spec; None: the model's own feeds)."""
    out = []
    for b, feeds in workload_feeds(io, work, work.pool):
        if spec is not None:
            from .triton_python import request_from_feeds

            feeds = request_from_feeds(feeds, spec)
        out.append((b, feeds))
    return out


def server_stats(client, model: str, protocol: str) -> dict:
    """Cumulative counters of `model` from Triton's statistics API: success count and ns, queue and
    compute (input + infer + output) ns, executions, and busy ns (compute time summed over
    executions, from the per-batch-size statistics)."""
    raw = client.get_inference_statistics(model, as_json=True) if protocol == "grpc" else \
        client.get_inference_statistics(model)
    s = raw["model_stats"][0]
    inf = s["inference_stats"]
    num = lambda d, k: int(d.get(k, {}).get("ns", 0))  # noqa: E731
    compute = lambda d: num(d, "compute_input") + num(d, "compute_infer") + num(d, "compute_output")  # noqa: E731
    return {"success": int(inf.get("success", {}).get("count", 0)), "queue_ns": num(inf, "queue"),
            "compute_ns": compute(inf), "executions": int(s.get("execution_count", 0)),
            "busy_ns": sum(compute(b) for b in s.get("batch_stats", []))}


def instance_count(config: dict) -> int:
    """Model instances the served config runs (count x GPUs of each instance group)."""
    groups = config.get("instance_group") or [{"count": 1}]
    return sum(int(g.get("count", 1)) * max(1, len(g.get("gpus") or [])) for g in groups)


def grpc_request_bytes(model: str, arrays: dict[str, np.ndarray], output_names: list[str]) -> bytes:
    """A serialised gRPC ModelInferRequest carrying `arrays` (what tritonclient builds for every
    call; built once here, so sending costs the client no protobuf work)."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype

    req = service_pb2.ModelInferRequest(model_name=model)
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        req.inputs.add(name=name, datatype=np_to_triton_dtype(a.dtype), shape=list(a.shape))
        req.raw_input_contents.append(a.tobytes())
    for n in output_names:
        req.outputs.add(name=n)
    return req.SerializeToString()


def http_request_body(arrays: dict[str, np.ndarray], output_names: list[str]) -> tuple[bytes, int | None]:
    """The body of an HTTP infer request carrying `arrays` as binary tensors (a JSON header, then the
    tensors' bytes; what tritonclient builds for every call), and the JSON header's length."""
    from tritonclient.http import InferenceServerClient, InferRequestedOutput

    from .triton_client import make_infer_inputs

    outputs = [InferRequestedOutput(n, binary_data=True) for n in output_names]
    return InferenceServerClient.generate_request_body(make_infer_inputs(arrays, "http"), outputs=outputs)


def _http_error(status: int, payload: bytes) -> str:
    """The server's message of a failed HTTP request (its JSON ``error``), else the status."""
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {payload[:200]!r}"


def _http_sender(url: str, model: str):
    """send(body, header length) over one keep-alive HTTP connection to url (host:port); returns
    (the response's JSON header length or None, its body); RuntimeError with the server's message."""
    import http.client

    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    path = f"/v2/models/{model}/infer"

    def send(data):
        body, json_size = data
        headers = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(_http_error(resp.status, payload))
        size = resp.getheader("Inference-Header-Content-Length")
        return (int(size) if size is not None else None), payload
    return send


SENDERS = ("prebuilt", "tritonclient")


class _Target:
    """What one client process sends: the requests prepared once for `sender` ("prebuilt": requests
    serialised once and sent as bytes, on a gRPC channel or an HTTP connection; "tritonclient":
    InferInput objects made once, client.infer per request)."""

    def __init__(self, protocol: str, url: str, model: str, requests, output_names: list[str], sender: str):
        self.protocol, self.url, self.model, self.output_names = protocol, url, model, output_names
        self.sender = sender
        if self.sender == "prebuilt" and protocol == "http":
            self.inputs = [(b, http_request_body(r, output_names)) for b, r in requests]
        elif self.sender == "prebuilt":
            self.inputs = [(b, grpc_request_bytes(model, r, output_names)) for b, r in requests]
        else:
            from .triton_client import client_module, make_infer_inputs

            self.tc = client_module(protocol)
            self.inputs = [(b, make_infer_inputs(r, protocol)) for b, r in requests]
            self.outputs = [self.tc.InferRequestedOutput(n) for n in output_names]

    def send_function(self):
        """A function sending request i (one connection per calling thread); raises on a failed request."""
        if self.sender == "prebuilt" and self.protocol == "http":
            return _http_sender(self.url, self.model)
        if self.sender == "prebuilt":
            import grpc
            from tritonclient.grpc import service_pb2

            channel = grpc.insecure_channel(self.url, options=[("grpc.max_send_message_length", -1),
                                                               ("grpc.max_receive_message_length", -1)])
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                       response_deserializer=service_pb2.ModelInferResponse.FromString)

            def send(data):
                try:
                    return call(data)
                except grpc.RpcError as e:
                    raise RuntimeError(e.details() or str(e.code())) from None
            return send
        client = self.tc.InferenceServerClient(url=self.url)
        return lambda inputs: client.infer(self.model, inputs, outputs=self.outputs)


def _client_loop(target: _Target, measure_from, deadline, lat, counts, k, errors):
    send = target.send_function()
    inputs = target.inputs
    i = k
    while time.monotonic() < deadline:
        b, data = inputs[i % len(inputs)]
        t0 = time.monotonic()
        try:
            send(data)
        except Exception as e:  # noqa: BLE001 - counted and reported, the sweep goes on
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            if len(errors) > 1000:
                return
            i += 1
            continue
        t1 = time.monotonic()
        if t0 >= measure_from and t1 <= deadline:  # inside the window the server's statistics cover
            lat.append(t1 - t0)
            counts.append(b)
        i += 1


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_threads(target: _Target, threads: int, first: int, measure_from: float, deadline: float) -> dict:
    """`threads` client threads of this process until `deadline` (monotonic clock, shared by the
    processes of a point); latencies of requests started from `measure_from`, this process's CPU
    seconds over the measured window."""
    lat, counts, errors = [], [], []
    pool = [threading.Thread(target=_client_loop, daemon=True,
                             args=(target, measure_from, deadline, lat, counts, first + k, errors))
            for k in range(threads)]
    for t in pool:
        t.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu0 = _cpu_s()
    time.sleep(max(0.0, deadline - time.monotonic()))
    cpu = _cpu_s() - cpu0
    for t in pool:
        t.join()
    return {"latency_s": np.array(lat), "samples": int(sum(counts)), "errors": errors, "cpu_s": cpu}


def _worker_main(read_fd: int, write_fd: int) -> None:
    """A client process (started by LoadGenerator): gets its target, prepares the requests once,
    then runs points as the parent asks, over two pipes."""
    from multiprocessing.connection import Connection

    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        target = _Target(*inbox.recv())
        outbox.send("ready")
        while True:
            job = inbox.recv()
            if job is None:
                return
            outbox.send(_run_threads(target, *job))
    except Exception as e:  # noqa: BLE001 - the parent reports it
        outbox.send(f"{type(e).__name__}: {e}")


class LoadGenerator:
    """Client threads in this process (processes=1) or spread over `processes` client processes
    (each with its own threads and connections, so one Python process's GIL and serialisation do
    not bound the load). A context manager: the processes are always stopped."""

    def __init__(self, protocol: str, url: str, model: str, requests, output_names: list[str], *,
                 processes: int = 1, sender: str = "prebuilt"):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        if sender not in SENDERS:
            raise ValueError(f"sender '{sender}' is not one of {SENDERS}")
        self.processes = processes
        self.target, self.workers = None, []
        if processes == 1:
            self.target = _Target(protocol, url, model, requests, output_names, sender)
            return
        import os
        import subprocess
        from multiprocessing.connection import Connection

        # Plain interpreters running _worker_main (not multiprocessing's spawn, which re-runs the
        # caller's __main__; no fork of a process holding gRPC state).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p] +
                                                          [os.environ.get("PYTHONPATH", "")]))
        code = f"import {__name__} as m; m._worker_main(int(__import__('sys').argv[1]), int(__import__('sys').argv[2]))"
        try:
            for _ in range(processes):
                down_r, down_w = os.pipe()
                up_r, up_w = os.pipe()
                proc = subprocess.Popen([sys.executable, "-c", code, str(down_r), str(up_w)], pass_fds=(down_r, up_w),
                                        env=env)
                os.close(down_r)
                os.close(up_w)
                self.workers.append((proc, Connection(down_w, readable=False), Connection(up_r, writable=False)))
                self.workers[-1][1].send((protocol, url, model, requests, output_names, sender))
            for proc, _, inbox in self.workers:
                msg = inbox.recv() if inbox.poll(300) else "no answer within 300 s"
                if msg != "ready":
                    raise RuntimeError(f"triton-bench client process failed: {msg}")
        except BaseException:
            self.close()
            raise

    def run(self, concurrency: int, measure_from: float, deadline: float) -> list[dict]:
        """Runs `concurrency` clients (threads spread evenly over the processes); one result per
        process that ran clients."""
        if self.target is not None:
            return [_run_threads(self.target, concurrency, 0, measure_from, deadline)]
        share = [concurrency // self.processes + (k < concurrency % self.processes) for k in range(self.processes)]
        busy = [(w, n, sum(share[:k])) for k, (w, n) in enumerate(zip(self.workers, share)) if n]
        for (_, outbox, _), n, first in busy:
            outbox.send((n, first, measure_from, deadline))
        out = []
        for (_, _, inbox), _, _ in busy:
            msg = inbox.recv() if inbox.poll(max(60.0, deadline - time.monotonic() + 120)) else "no answer"
            if not isinstance(msg, dict):
                raise RuntimeError(f"triton-bench client process failed: {msg}")
            out.append(msg)
        return out

    def close(self) -> None:
        """Stops the client processes."""
        import subprocess

        for _, outbox, _ in self.workers:
            try:
                outbox.send(None)
            except OSError:
                pass
        for proc, outbox, inbox in self.workers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            outbox.close()
            inbox.close()
        self.workers = []

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def client_bound(row: dict, instances: int) -> str | None:
    """Why the measured throughput may be limited by the client rather than the server, or None:
    a client process near one full core (Python threads share one interpreter lock), or enough
    clients to keep every instance busy while the server idles and most of the latency is spent
    outside the server (client, network, the server's frontend)."""
    if row["client_cpu_max"] is not None and row["client_cpu_max"] >= 0.9:
        return f"a client process used {row['client_cpu_max'] * 100:.0f}% of a core"
    server_ms = (row["server_queue_ms"] or 0) + (row["server_compute_ms"] or 0)
    if (row["concurrency"] > instances and row["server_busy"] is not None and row["server_busy"] < 0.5
            and row["mean_ms"] is not None and row["mean_ms"] > 2 * server_ms + 1):
        return (f"the server was busy {row['server_busy'] * 100:.0f}% of the time while {row['mean_ms'] - server_ms:.1f} "
                f"of {row['mean_ms']:.1f} ms per request were spent outside it")
    return None


def run_point(protocol: str, url: str, model: str, requests, concurrency: int, duration_s: float,
              warmup_s: float, output_names: list[str], *, load: LoadGenerator | None = None,
              instances: int = 1) -> dict:
    """One sweep point: `concurrency` clients for warmup_s + duration_s; returns its row. `load`:
    the client threads/processes (default: threads of this process)."""
    from .triton_client import client_module

    own = load is None
    load = load or LoadGenerator(protocol, url, model, requests, output_names)
    tc = client_module(protocol)
    admin = tc.InferenceServerClient(url=url)
    start = time.monotonic()
    measure_from, deadline = start + warmup_s + 0.2, start + warmup_s + 0.2 + duration_s
    box = {}

    def stats_at(key, when):  # taken on time, whatever the client threads do
        time.sleep(max(0.0, when - time.monotonic()))
        box[key] = server_stats(admin, model, protocol)

    watcher = threading.Thread(target=lambda: (stats_at("before", measure_from), stats_at("after", deadline)))
    watcher.start()
    try:
        parts = load.run(concurrency, measure_from, deadline)
    finally:
        watcher.join()
        if own:
            load.close()
    d = {k: box["after"][k] - box["before"][k] for k in box["after"]}
    lat = np.concatenate([p["latency_s"] for p in parts]) if parts else np.array([])
    errors = [e for p in parts for e in p["errors"]]
    samples = sum(p["samples"] for p in parts)
    ms = lat * 1e3
    n = max(1, d["success"])
    row = {"protocol": protocol, "concurrency": concurrency, "processes": load.processes, "requests": len(lat),
           "samples": samples, "seconds": duration_s, "requests_per_s": len(lat) / duration_s,
           "samples_per_s": samples / duration_s,
           "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
           "p90_ms": float(np.percentile(ms, 90)) if len(ms) else None,
           "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
           "mean_ms": float(ms.mean()) if len(ms) else None, "errors": len(errors),
           "first_error": errors[0] if errors else None,
           "server_queue_ms": d["queue_ns"] / n / 1e6, "server_compute_ms": d["compute_ns"] / n / 1e6,
           "server_requests": d["success"], "server_executions": d["executions"],
           "requests_per_execution": d["success"] / d["executions"] if d["executions"] else None,
           "server_busy": d["busy_ns"] / 1e9 / duration_s / max(1, instances),
           "client_cpu": sum(p["cpu_s"] for p in parts) / duration_s,
           "client_cpu_max": max((p["cpu_s"] for p in parts), default=0.0) / duration_s}
    row["client_bound"] = client_bound(row, instances)
    return row


def _served(onnx_path, io, model: str, url: str, protocol: str, work: Workload) -> dict:
    """What the clients need about one served model: its config, request spec, instances, requests."""
    from .triton_client import client_module, model_config, request_spec

    try:
        config = model_config(client_module(protocol).InferenceServerClient(url=url), model, protocol)
    except Exception as e:  # noqa: BLE001 - tritonclient's errors: unknown model, no server
        msg = e.message() if hasattr(e, "message") else str(e)
        raise ValueError(f"cannot read model '{model}' from {url} ({protocol}): {msg}") from None
    spec = request_spec(config, io)  # ValueError when the served inputs are not this ONNX file's
    return {"config": config, "spec": spec, "instances": instance_count(config),
            "requests": make_requests(io, work, spec)}


# Served answers vs local ONNX Runtime (CPU): the served model may run fp16 MLPs on a GPU.
CHECK_RTOL, CHECK_ATOL = 1e-2, 2e-3


def check_answers(onnx_path, io, model: str, url: str, protocol: str, work: Workload, count: int) -> int:
    """Sends the workload's first `count` requests one by one and compares every output with local
    ONNX Runtime on the CPU on the same feeds; ValueError naming the first request and output that
    differ. Returns count. Runs before anything is timed, so no timed row comes from a server that
    answers wrongly."""
    from .ort import ort_session
    from .triton_client import infer_feeds

    if count <= 0:
        return 0
    sess = ort_session(str(onnx_path), device="cpu")
    for k, (b, feeds) in enumerate(workload_feeds(io, work, count)):
        got = infer_feeds(feeds, model, io, url=url, protocol=protocol)
        for name, want in zip(sess.output_names, sess.run(feeds)):
            have = np.asarray(got[name], dtype=np.float64)
            if have.shape != want.shape or not np.allclose(have, want, rtol=CHECK_RTOL, atol=CHECK_ATOL):
                worst = float(np.max(np.abs(have - want))) if have.shape == want.shape else float("nan")
                raise ValueError(f"model '{model}' ({protocol}) answered request {k} ({b} samples) differently from "
                                 f"local ONNX Runtime: output '{name}' {list(have.shape)} vs {list(want.shape)}, "
                                 f"max difference {worst:.3g}; nothing was timed")
    return count


def median_row(rows: list[dict], instances: int) -> dict:
    """One row of several rounds of the same point: the median of every number, errors summed."""
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(r.get(k) is not None for r in rows):
            out[k] = float(np.median([r[k] for r in rows]))
    out.update(errors=sum(r["errors"] for r in rows), rounds=len(rows), concurrency=rows[0]["concurrency"],
               processes=rows[0]["processes"], requests=int(sum(r["requests"] for r in rows)),
               first_error=next((r["first_error"] for r in rows if r["first_error"]), None))
    out.pop("round", None)
    if all(r.get("profile") for r in rows):  # model.py's steps: medians too, counts summed
        profs = [r["profile"] for r in rows]
        steps = lambda key: {k: float(np.median([p[key].get(k, 0.0) for p in profs]))  # noqa: E731
                             for k in profs[0][key]}
        out["profile"] = {"executions": sum(p["executions"] for p in profs), "requests": sum(p["requests"] for p in profs),
                          "requests_per_execution": float(np.median([p["requests_per_execution"] or 0 for p in profs])),
                          "ms_per_execution": steps("ms_per_execution"), "ms_per_request": steps("ms_per_request")}
    out["client_bound"] = client_bound(out, instances)
    return out


def _attach_profile(row: dict, summary: dict) -> None:
    """model.py's timing over the point beside Triton's: model.py's ms per request and the python
    backend's own (Triton's compute per execution / requests per execution - model.py's)."""
    row["profile"] = summary
    per = summary["ms_per_request"].get("execute")
    row["model_py_ms_per_request"] = per
    rpe = row["requests_per_execution"]
    row["backend_ms_per_request"] = row["server_compute_ms"] / rpe - per if per is not None and rpe else None


def sweep(onnx_path, model, urls: dict[str, str], concurrencies: list[int], work: Workload,
          duration_s: float = 5.0, warmup_s: float = 1.0, progress=print, *, processes: int = 1,
          sender: str = "prebuilt", rounds: int = 1, profile_dir=None, check: int = 2) -> dict:
    """Runs every (protocol, concurrency) point with the clients spread over `processes` client
    processes (1: threads of this process); returns ``{"model", "workload", ..., "rows"}``.

    model: one served model, or a list of several served from the same ONNX file (e.g. the two
    request forms): each point then measures them in turn, `rounds` times in alternating order, so
    that a shared machine's changing load hits them alike; rows are per model (``"model"``) and, with
    rounds > 1, the medians of the rounds (every round in ``"round_rows"``). profile_dir: the
    server's model.py timing log (``triton-serve --profile DIR`` on this machine): each row gets
    model.py's ms per request and the python backend's own (``backend_ms_per_request``). check: the
    workload's first `check` requests are answered by each model over each protocol and compared
    with local ONNX Runtime before anything is timed (check_answers; 0 skips it, recorded as
    ``"checked"``)."""
    from .model_io import describe_onnx

    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    models = [model] if isinstance(model, str) else list(model)
    io = describe_onnx(onnx_path)
    first = next(iter(urls))
    served = {m: _served(onnx_path, io, m, urls[first], first, work) for m in models}
    outputs = [t.name for t in io.outputs]
    several = len(models) > 1
    tag = (lambda m: f"{m:<16}") if several else (lambda m: "")  # noqa: E731
    for m, sv in served.items():
        if sv["spec"] is not None:
            progress(f"  {tag(m)}{sv['config'].get('backend')} backend, {sv['spec']['form']} request form: "
                     f"{len(sv['requests'][0][1])} inputs per request")
    checked = {m: {p: check_answers(onnx_path, io, m, u, p, work, check) for p, u in urls.items()} for m in models}
    if check > 0:
        progress(f"  answers of the first {check} requests equal local ONNX Runtime's ({', '.join(urls)})")
    rows, round_rows = [], []
    for protocol, url in urls.items():
        loads = {}
        try:
            for m in models:
                loads[m] = LoadGenerator(protocol, url, m, served[m]["requests"], outputs, processes=processes,
                                         sender=sender)
            for c in concurrencies:
                per = {m: [] for m in models}
                for k in range(rounds):
                    for m in (models if k % 2 == 0 else models[::-1]):
                        marks = profile_marks(profile_dir) if profile_dir else None
                        row = run_point(protocol, url, m, served[m]["requests"], c, duration_s, warmup_s, outputs,
                                        load=loads[m], instances=served[m]["instances"])
                        row.update(model=m, round=k)
                        if profile_dir:
                            _attach_profile(row, profile_summary(profile_dir, since=marks))
                        per[m].append(row)
                        if rounds > 1:
                            round_rows.append(row)
                for m in models:
                    row = per[m][0] if rounds == 1 else median_row(per[m], served[m]["instances"])
                    rows.append(row)
                    progress(tag(m) + format_row(row))
                    if profile_dir:
                        progress(f"  {tag(m)}{format_profile(row['profile'])}" + (
                            f"; python backend's own {row['backend_ms_per_request']:.3f} ms per request"
                            if row["backend_ms_per_request"] is not None else ""))
                    if row["client_bound"]:
                        progress(f"  client-bound? {row['client_bound']}: the numbers may understate the server "
                                 f"(more --processes, or clients on another machine)")
        finally:
            for load in loads.values():
                load.close()
    head = served[models[0]]
    spec = head["spec"]
    result = {"model": model if isinstance(model, str) else models, "onnx": str(onnx_path),
              "workload": dataclasses.asdict(work), "backend": head["config"].get("backend"),
              "max_batch_size": head["config"].get("max_batch_size"),
              "request_form": spec["form"] if spec else None,
              "request_inputs": len(head["requests"][0][1]) if head["requests"] else None,
              "instances": head["instances"], "processes": processes, "sender": sender, "duration_s": duration_s,
              "rounds": rounds, "checked": checked, "rows": rows}
    if several:
        result["models"] = {m: {"backend": sv["config"].get("backend"),
                                "max_batch_size": sv["config"].get("max_batch_size"),
                                "request_form": sv["spec"]["form"] if sv["spec"] else None,
                                "request_inputs": len(sv["requests"][0][1]) if sv["requests"] else None,
                                "instances": sv["instances"]} for m, sv in served.items()}
    if round_rows:
        result["round_rows"] = round_rows
    return result


PROFILE_STEPS = ("fetch", "parse", "merge", "run", "split", "respond", "execute")


def profile_summary(folder, since: dict | None = None) -> dict:
    """Summary of model.py's timing log (``triton-serve --profile DIR``): executions, requests per
    execution and, per step, mean ms per execution and per request. `since` ({file: lines}, from
    ``profile_marks``) skips what was logged before."""
    lines = []
    for f in sorted(pathlib.Path(folder).glob("*.jsonl")):
        rows = f.read_text().splitlines()[(since or {}).get(str(f), 0):]
        lines += [json.loads(r) for r in rows if r.strip()]
    n = sum(r["requests"] for r in lines)
    steps = {k: sum(r.get(k) or 0.0 for r in lines) for k in PROFILE_STEPS}
    return {"executions": len(lines), "requests": n,
            "requests_per_execution": n / len(lines) if lines else None,
            "ms_per_execution": {k: v / len(lines) * 1e3 for k, v in steps.items()} if lines else {},
            "ms_per_request": {k: v / n * 1e3 for k, v in steps.items()} if n else {}}


def profile_marks(folder) -> dict:
    """``{file: lines}`` of the timing log now (for profile_summary's `since`)."""
    return {str(f): len(f.read_text().splitlines()) for f in pathlib.Path(folder).glob("*.jsonl")}


def format_profile(summary: dict) -> str:
    """One line of a profile summary."""
    if not summary["executions"]:
        return "model.py: no executions logged"
    per = summary["ms_per_request"]
    return (f"model.py: {summary['executions']} executions, {summary['requests_per_execution']:.2f} requests each; "
            "ms per request: " + ", ".join(f"{k} {per[k]:.3f}" for k in PROFILE_STEPS))


HEADER = (f"{'proto':<5} {'conc':>5} {'req/s':>9} {'samples/s':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'queue ms':>9} {'compute ms':>10} {'req/exec':>8} {'busy %':>6} {'client cpu':>10} {'errors':>6}")


def format_row(r: dict) -> str:
    """One table line of a sweep row."""
    f = lambda v, w, p=2: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    return (f"{r['protocol']:<5} {r['concurrency']:>5} {r['requests_per_s']:>9.1f} {r['samples_per_s']:>11.0f} "
            f"{f(r['p50_ms'], 8)} {f(r['p90_ms'], 8)} {f(r['p99_ms'], 8)} {f(r['server_queue_ms'], 9)} "
            f"{f(r['server_compute_ms'], 10)} {f(r['requests_per_execution'], 8)} "
            f"{f(r.get('server_busy') and r['server_busy'] * 100, 6, 0)} {f(r.get('client_cpu'), 10)} {r['errors']:>6}")


def plot(result: dict, path) -> None:
    """PNG: throughput (samples/s) and p99 latency against concurrency, one line per protocol (and
model, when several were compared)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    several = isinstance(result["model"], list)
    for key in sorted({(r.get("model", ""), r["protocol"]) for r in result["rows"]}):
        rows = [r for r in result["rows"] if (r.get("model", ""), r["protocol"]) == key]
        label = f"{key[0]} {key[1]}" if several else key[1]
        xs = [r["concurrency"] for r in rows]
        a.plot(xs, [r["samples_per_s"] for r in rows], marker="o", label=label)
        b.plot(xs, [r["p99_ms"] or 0 for r in rows], marker="o", label=f"{label} p99")
        b.plot(xs, [r["server_queue_ms"] for r in rows], linestyle="--", label=f"{label} server queue (mean)")
    for ax, title, unit in ((a, "throughput", "samples/s"), (b, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        name = " vs ".join(result["model"]) if several else result["model"]
        ax.set_title(f"{name} ({result['backend']}): {title}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _range_arg(text: str) -> tuple[int, int]:
    """N or LO:HI -> (lo, hi)."""
    try:
        lo, _, hi = text.partition(":")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected N or LO:HI") from None
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"'{text}': need 1 <= LO <= HI")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrm-deploy triton-bench``."""
    p.add_argument("--model", default="dlrm",
                   help="served model name (default dlrm), or several, comma-separated, served from the same ONNX "
                        "file (e.g. the packed and tables request forms): each point measures them in turn, "
                        "--rounds times in alternating order")
    p.add_argument("--onnx", help="the ONNX file the model was made from (default: REPO/MODEL/1/model.onnx)")
    p.add_argument("--repo", help="the model repository (to find the ONNX file)")
    p.add_argument("--protocol", default="grpc,http", help="grpc, http or both (default grpc,http)")
    p.add_argument("--grpc-url", default="localhost:8001", help="gRPC host:port (default localhost:8001)")
    p.add_argument("--http-url", default="localhost:8000", help="HTTP host:port (default localhost:8000)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts (default 1,4,16,64)")
    p.add_argument("--batch", type=_range_arg, default=(64, 64), help="samples per request, N or LO:HI (default 64)")
    p.add_argument("--pooling", type=_range_arg, default=(20, 150),
                   help="mean lookups per bag of a request, N or LO:HI (default 20:150)")
    p.add_argument("--pool", type=int, default=16, help="distinct requests cycled through (default 16)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point (default 1)")
    p.add_argument("--processes", type=int, default=1,
                   help="client processes the clients are spread over (default 1: threads of this process); "
                        "use several when one Python process cannot keep the server busy")
    p.add_argument("--sender", choices=SENDERS, default="prebuilt",
                   help="prebuilt (requests serialised once, sent as bytes; default) or tritonclient "
                        "(client.infer per request)")
    p.add_argument("--rounds", type=int,
                   help="rounds per point; rows are the medians (default 1; 3 with several models)")
    p.add_argument("--profile", metavar="DIR",
                   help="the server's model.py timing log (triton-serve --profile DIR, same machine): each row "
                        "gets model.py's time per request and the python backend's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", type=int, default=2, metavar="N",
                   help="before timing, compare the answers to the first N requests with local ONNX Runtime on "
                        "the CPU (default 2; 0 skips the check, recorded in the JSON)")
    p.add_argument("--out", default="triton_bench.json", help="JSON results; the plot goes beside it as .png")


def main(args: argparse.Namespace) -> int:
    """Runs ``dlrm-deploy triton-bench``: prints a table, writes JSON and PNG."""
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models or len(set(models)) != len(models):
        raise ValueError(f"--model '{args.model}': one or more distinct model names, comma-separated")
    rounds = args.rounds if args.rounds is not None else (3 if len(models) > 1 else 1)
    if rounds < 1:
        raise ValueError("--rounds must be >= 1")
    if args.profile and not pathlib.Path(args.profile).is_dir():
        raise FileNotFoundError(f"--profile {args.profile}: no such folder (the server's triton-serve --profile DIR)")
    onnx = args.onnx or (str(pathlib.Path(args.repo) / models[0] / "1" / "model.onnx") if args.repo else None)
    if onnx is None:
        raise ValueError("give --onnx (the exported file) or --repo (the model repository)")
    if not pathlib.Path(onnx).is_file():
        raise FileNotFoundError(f"ONNX file {onnx} not found (tensorrt repositories: pass --onnx)")
    protocols = [s.strip() for s in args.protocol.split(",") if s.strip()]
    if not protocols or any(s not in ("grpc", "http") for s in protocols):
        raise ValueError(f"--protocol '{args.protocol}': grpc, http or grpc,http")
    try:
        conc = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        raise ValueError(f"--concurrency '{args.concurrency}': comma-separated integers") from None
    if any(c < 1 for c in conc) or args.duration <= 0 or args.warmup < 0 or args.pool < 1 or args.processes < 1:
        raise ValueError("--concurrency, --pool and --processes must be >= 1, --duration > 0, --warmup >= 0")
    urls = {p: args.grpc_url if p == "grpc" else args.http_url for p in protocols}
    work = Workload(args.batch, args.pooling, args.pool, args.seed)
    print((f"{'model':<16}" if len(models) > 1 else "") + HEADER, flush=True)
    result = sweep(onnx, models[0] if len(models) == 1 else models, urls, conc, work, args.duration, args.warmup,
                   progress=lambda line: print(line, flush=True), processes=args.processes, sender=args.sender,
                   rounds=rounds, profile_dir=args.profile, check=args.check)
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    bad = sum(r["errors"] for r in result["rows"])
    if bad:
        print(f"dlrm-deploy triton-bench: {bad} requests failed, e.g. {next(r['first_error'] for r in result['rows'] if r['errors'])}",
              file=sys.stderr)
    return 1 if bad else 0
