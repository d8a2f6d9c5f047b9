"""Child processes of ``dlrm-deploy bench e2e``: our export (so that its peak host memory is its
own) and the stock-exporter row (under a wall-clock budget; killed when over). The parent writes a
job file, the child reports its stages and result as JSON lines in a status file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from .accuracy import compare, onnx_feeds
from .bench_common import say
from .bench_files import export_stock
from .bench_memory import host_peak, proc_status_bytes
from .timing import summary_ms


def _config_from(d: dict):
    from dlrm_deploy.export import DLRMConfig

    d = dict(d)
    for k in ("table_rows", "bottom_mlp", "top_mlp"):
        d[k] = tuple(d[k])
    return DLRMConfig(**d)


def _status_writer(path: str):
    """A function appending {"stage", "t", ...} JSON lines to path (the child's report to its parent)."""

    def status(stage: str, **kw) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"stage": stage, "t": time.time(), **kw}) + "\n")

    return status


def _read_status(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n") and line.strip()]
    except (OSError, ValueError):
        return []


def child_main(job_path: str) -> int:
    """Entry of a child process: builds the model of the job (JSON file job_path), then runs it:
    "export" exports it with our op, "stock" runs the stock-exporter row. Reports its stages and
    result through the job's status file; the "export" stage starts the parent's budget clock."""
    with open(job_path) as f:
        job = json.load(f)
    status = _status_writer(job["status"])
    try:
        import torch

        from dlrm_deploy.export import DLRM

        if job.get("threads"):
            torch.set_num_threads(job["threads"])
        rss_runtime = proc_status_bytes("VmRSS")
        cfg = _config_from(job["config"])
        model = DLRM(cfg, seed=job["seed"]).eval()
        rss_model = proc_status_bytes("VmRSS")
        status("export")
        result = (_child_export if job["kind"] == "export" else _child_stock)(job, cfg, model, status)
        result.update(rss_runtime=rss_runtime, rss_model=rss_model)
        status("done", result=result)
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        status("error", error=f"{type(e).__name__}: {e}"[:500])
        return 1


def _ids(job: dict):
    """The torch dtype of the ids and offsets the parent feeds (its --ids)."""
    import torch

    return getattr(torch, job.get("ids", "int64"))


def _child_export(job: dict, cfg, model, status) -> dict:
    """Our export of the model, its host memory measured (VmHWM reset just before export_onnx)."""
    from dlrm_deploy.export import export_onnx, make_inputs

    h = job.get("hot_sample")
    sample = (make_inputs(cfg, h["batch"], pooling=h["pooling"], source=h["source"], seed=h["seed"])
              if h else None)
    example = make_inputs(cfg, 8, pooling=4, seed=1, index_dtype=_ids(job))
    info, mem = host_peak(lambda: export_onnx(
        model, example, job["path"], dtype=job["dtype"], hot_rows_from=sample, validate=job["validate"],
        progress=lambda m: say(f"    [{job['name']}] " + m.replace("\n", f"\n    [{job['name']}] "))))
    return {"pinned_rows": info.pinned_rows, "weight_bytes": info.weight_bytes, "seconds": info.seconds,
            "memory": mem}


def _child_stock(job: dict, cfg, model, status) -> dict:
    """The stock-exporter row: export, session, check against the parent's reference, timed runs
    (one status line per run, so a timeout says how far it got)."""
    import torch

    from dlrm_deploy.export import make_inputs
    from dlrm_deploy.runtime import ort as ort_rt

    t = time.perf_counter()
    # int64 ids: the stock exporter's graph mixes its own int64 constants with the ids (ORT refuses
    # its Concat of int32 and int64)
    _, export_mem = host_peak(lambda: export_stock(model, make_inputs(cfg, 8, pooling=4, seed=1), job["path"]))
    status("session", export_s=time.perf_counter() - t, export_memory=export_mem)
    sess, session_mem = host_peak(lambda: ort_rt.ort_session(job["path"], device=job["device"],
                                                             **job["ort_options"]))
    status("check", session_memory=session_mem)
    inputs, check_inputs = (_int64_ids(x) for x in torch.load(job["inputs"]))
    err, rel = compare(sess.run(onnx_feeds(sess.input_names, *check_inputs))[0], np.load(job["reference"]))
    out = {"max_abs_err": err, "max_rel_err": rel, "ok": err <= job["tolerance"], "export_memory": export_mem,
           "session_memory": session_mem}
    if not out["ok"]:
        return out
    feeds = sess.to_device(onnx_feeds(sess.input_names, *inputs))
    binding = sess.make_binding(feeds)
    status("warm-up")
    for _ in range(job["warmup"]):
        sess.run_device(feeds, binding)
    times = []
    for i in range(job["runs"]):
        t = time.perf_counter()
        sess.run_device(feeds, binding)
        times.append((time.perf_counter() - t) * 1e3)
        status("runs", done=i + 1)
    out.update(summary_ms(times))
    return out


def _int64_ids(inputs):
    dense, indices, offsets = inputs
    return dense, [i.long() for i in indices], [o.long() for o in offsets]


def run_child(job: dict, workdir: str, budget_s: float | None = None, setup_s: float = 1800.0) -> dict:
    """Runs job (see child_main) in a child Python process and waits for it.

    budget_s bounds the wall-clock time from the child's "export" stage on (export, session creation,
    runs); setup_s bounds the time before it (imports, building the model). A child over either is
    killed. Returns the child's result; or {"timed_out": True, "stage", "elapsed_s", "budget_s", ...
    what the stages reported}; or {"error": message}."""
    name = job.get("name", job["kind"])
    status_path = os.path.join(workdir, f"{name}.status.jsonl")
    job_path = os.path.join(workdir, f"{name}.job.json")
    if os.path.exists(status_path):
        os.remove(status_path)
    with open(job_path, "w") as f:
        json.dump(dict(job, status=status_path), f)
    # os._exit: the result is in the status file; skipping the interpreter's teardown saves seconds
    code = ("import os, sys; from dlrm_deploy.runtime.bench_child import child_main; rc = child_main(sys.argv[1]); "
            "sys.stdout.flush(); sys.stderr.flush(); os._exit(rc)")
    t_start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code, job_path])
    try:
        while proc.poll() is None:
            lines = _read_status(status_path)
            started = next((s["t"] for s in lines if s["stage"] == "export"), None)
            now = time.time()
            over = (started is None and now - t_start > setup_s) or \
                   (started is not None and budget_s is not None and now - started > budget_s)
            if over:
                proc.kill()
                proc.wait()
                report = {k: v for s in lines for k, v in s.items() if k not in ("stage", "t")}
                return dict(report, timed_out=True, stage=lines[-1]["stage"] if lines else "setup",
                            elapsed_s=now - (started or t_start), budget_s=budget_s if started else setup_s)
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for s in reversed(_read_status(status_path)):
        if s["stage"] == "done":
            return s["result"]
        if s["stage"] == "error":
            return {"error": s["error"]}
    return {"error": f"the child process exited with status {proc.returncode} without a result"}


# ------------------------------------------------------------------------------------------------
# PyTorch rows: eager, FBGEMM TBE, CUDA graphs, torch.compile
