"""Load test of a served model (``dlrm-deploy triton-bench``): a concurrency sweep over gRPC and/or HTTP.

Requests are valid for the model (``model_io.sample_inputs``: ids inside each table) with samples per
request and mean lookups per bag drawn from the given ranges, sent in the form the served model takes
(``triton_client``). Each point runs `concurrency` client threads (one client each) for `duration_s`
after `warmup_s`, and reports throughput (requests/s, samples/s), latency percentiles (p50/p90/p99,
client side) and, from Triton's statistics API (difference over the point), the server's average
queue and compute time per request and the requests per model execution (> 1: dynamic batching
merged requests). Results go to JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
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


def make_requests(io, work: Workload, python_form: bool) -> list[tuple[int, dict]]:
    """``[(samples, request arrays)]``: valid requests of the workload, in the served model's form."""
    from .model_io import sample_inputs

    rng = np.random.default_rng(work.seed)
    spec = None
    if python_form:
        from .triton_python import io_spec

        spec = io_spec(io)
    out = []
    for i in range(work.pool):
        b = int(rng.integers(work.batch[0], work.batch[1] + 1))
        p = int(rng.integers(work.pooling[0], work.pooling[1] + 1))
        feeds = sample_inputs(io, batch=b, pooling=p, seed=work.seed + i)
        if spec is not None:
            from .triton_python import request_from_feeds

            feeds = request_from_feeds(feeds, spec)
        out.append((b, feeds))
    return out


def server_stats(client, model: str, protocol: str) -> dict:
    """Cumulative counters of `model` from Triton's statistics API: success count and ns, queue and
    compute (input + infer + output) ns, executions."""
    raw = client.get_inference_statistics(model, as_json=True) if protocol == "grpc" else \
        client.get_inference_statistics(model)
    s = raw["model_stats"][0]
    inf = s["inference_stats"]
    num = lambda d, k: int(d.get(k, {}).get("ns", 0))  # noqa: E731
    return {"success": int(inf.get("success", {}).get("count", 0)), "queue_ns": num(inf, "queue"),
            "compute_ns": num(inf, "compute_input") + num(inf, "compute_infer") + num(inf, "compute_output"),
            "executions": int(s.get("execution_count", 0))}


def _client_loop(tc, url, model, inputs, outputs, deadline, measure_from, lat, counts, k, errors):
    client = tc.InferenceServerClient(url=url)
    i = k
    while time.perf_counter() < deadline:
        b, infer_inputs = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        try:
            client.infer(model, infer_inputs, outputs=outputs)
        except Exception as e:  # noqa: BLE001 - counted and reported, the sweep goes on
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            if len(errors) > 1000:
                return
            i += 1
            continue
        t1 = time.perf_counter()
        if t0 >= measure_from:
            lat.append(t1 - t0)
            counts.append(b)
        i += 1


def run_point(protocol: str, url: str, model: str, requests, concurrency: int, duration_s: float,
              warmup_s: float, output_names: list[str]) -> dict:
    """One sweep point: `concurrency` threads for warmup_s + duration_s; returns its row."""
    from .triton_client import client_module, make_infer_inputs

    tc = client_module(protocol)
    inputs = [(b, make_infer_inputs(r, protocol)) for b, r in requests]
    outputs = [tc.InferRequestedOutput(n) for n in output_names]
    admin = tc.InferenceServerClient(url=url)
    lat, counts, errors = [], [], []
    start = time.perf_counter()
    measure_from, deadline = start + warmup_s, start + warmup_s + duration_s
    threads = [threading.Thread(target=_client_loop, daemon=True, args=(tc, url, model, inputs, outputs, deadline,
                                                                        measure_from, lat, counts, k, errors))
               for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    before = server_stats(admin, model, protocol)
    for t in threads:
        t.join()
    after = server_stats(admin, model, protocol)
    d = {k: after[k] - before[k] for k in after}
    ms = np.array(lat) * 1e3
    n = max(1, d["success"])
    return {"protocol": protocol, "concurrency": concurrency, "requests": len(lat), "samples": int(sum(counts)),
            "seconds": duration_s, "requests_per_s": len(lat) / duration_s, "samples_per_s": sum(counts) / duration_s,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p90_ms": float(np.percentile(ms, 90)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "mean_ms": float(ms.mean()) if len(ms) else None, "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "server_queue_ms": d["queue_ns"] / n / 1e6, "server_compute_ms": d["compute_ns"] / n / 1e6,
            "server_requests": d["success"], "server_executions": d["executions"],
            "requests_per_execution": d["success"] / d["executions"] if d["executions"] else None}


def sweep(onnx_path, model: str, urls: dict[str, str], concurrencies: list[int], work: Workload,
          duration_s: float = 5.0, warmup_s: float = 1.0, progress=print) -> dict:
    """Runs every (protocol, concurrency) point; returns ``{"model", "workload", "config", "rows"}``."""
    from .model_io import describe_onnx
    from .triton_client import client_module, is_python_backend, model_config

    io = describe_onnx(onnx_path)
    first = next(iter(urls))
    config = model_config(client_module(first).InferenceServerClient(url=urls[first]), model, first)
    python_form = is_python_backend(config)
    requests = make_requests(io, work, python_form)
    rows = []
    for protocol, url in urls.items():
        for c in concurrencies:
            row = run_point(protocol, url, model, requests, c, duration_s, warmup_s, [t.name for t in io.outputs])
            rows.append(row)
            progress(format_row(row))
    return {"model": model, "onnx": str(onnx_path), "workload": dataclasses.asdict(work),
            "backend": config.get("backend"), "max_batch_size": config.get("max_batch_size"),
            "duration_s": duration_s, "rows": rows}


HEADER = (f"{'proto':<5} {'conc':>5} {'req/s':>9} {'samples/s':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'queue ms':>9} {'compute ms':>10} {'req/exec':>8} {'errors':>6}")


def format_row(r: dict) -> str:
    """One table line of a sweep row."""
    f = lambda v, w, p=2: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    return (f"{r['protocol']:<5} {r['concurrency']:>5} {r['requests_per_s']:>9.1f} {r['samples_per_s']:>11.0f} "
            f"{f(r['p50_ms'], 8)} {f(r['p90_ms'], 8)} {f(r['p99_ms'], 8)} {f(r['server_queue_ms'], 9)} "
            f"{f(r['server_compute_ms'], 10)} {f(r['requests_per_execution'], 8)} {r['errors']:>6}")


def plot(result: dict, path) -> None:
    """PNG: throughput (samples/s) and p99 latency against concurrency, one line per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for proto in sorted({r["protocol"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["protocol"] == proto]
        xs = [r["concurrency"] for r in rows]
        a.plot(xs, [r["samples_per_s"] for r in rows], marker="o", label=proto)
        b.plot(xs, [r["p99_ms"] or 0 for r in rows], marker="o", label=f"{proto} p99")
        b.plot(xs, [r["server_queue_ms"] for r in rows], linestyle="--", label=f"{proto} server queue (mean)")
    for ax, title, unit in ((a, "throughput", "samples/s"), (b, "latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(f"{result['model']} ({result['backend']}): {title}")
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
    p.add_argument("--model", default="dlrm", help="served model name (default dlrm)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="triton_bench.json", help="JSON results; the plot goes beside it as .png")


def main(args: argparse.Namespace) -> int:
    """Runs ``dlrm-deploy triton-bench``: prints a table, writes JSON and PNG."""
    onnx = args.onnx or (str(pathlib.Path(args.repo) / args.model / "1" / "model.onnx") if args.repo else None)
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
    if any(c < 1 for c in conc) or args.duration <= 0 or args.warmup < 0 or args.pool < 1:
        raise ValueError("--concurrency and --pool must be >= 1, --duration > 0, --warmup >= 0")
    urls = {p: args.grpc_url if p == "grpc" else args.http_url for p in protocols}
    work = Workload(args.batch, args.pooling, args.pool, args.seed)
    print(HEADER, flush=True)
    result = sweep(onnx, args.model, urls, conc, work, args.duration, args.warmup,
                   progress=lambda line: print(line, flush=True))
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    bad = sum(r["errors"] for r in result["rows"])
    if bad:
        print(f"dlrm-deploy triton-bench: {bad} requests failed, e.g. {next(r['first_error'] for r in result['rows'] if r['errors'])}",
              file=sys.stderr)
    return 1 if bad else 0
