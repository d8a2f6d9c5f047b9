"""``dlrm-deploy bench e2e``: the whole DLRM, end to end, in every way we can run it.

Rows (same inputs, same device):
  - PyTorch eager with ``nn.EmbeddingBag`` (the reference every output is checked against);
  - the same model exported by torch.onnx without our op (the stock exporter) in ONNX Runtime, in a
    child process under a wall-clock budget (--stock-budget: export + session + runs);
  - our ONNX (``dlrm_deploy::EmbeddingBag``) in ONNX Runtime, once per kernel variant and check mode;
  - PyTorch with FBGEMM's table-batched embedding inference (``IntNBitTableBatchedEmbeddingBagsCodegen``,
    bounds checks off) where fbgemm_gpu imports: eager, captured in a CUDA graph, and
    ``torch.compile(mode="reduce-overhead")``;
  - PyTorch with ``nn.EmbeddingBag`` captured in a CUDA graph.
CUDA graph rows capture once on static input tensors (warm-up on a side stream) and time
``graph.replay()`` between CUDA events. ONNX Runtime uses its CUDA provider on a GPU machine and the
CPU provider elsewhere (our op then runs the core's fast CPU forward on ORT's intra-op threads,
``--threads``; GPU-only rows are skipped with the reason). Every row's output is compared with PyTorch on fresh inputs before it is
timed; times are the median (and min/max) of the runs after warm-up, with CUDA events for PyTorch
and synchronised wall-clock for ONNX Runtime (it syncs at the end of a run).

Memory, next to the table bytes: our export's peak host RSS (the export runs in a child process that
only builds the model and exports it), ONNX Runtime session creation's host RSS high-water above the
RSS before it, and the GPU memory a session takes (free device memory before/after, CUDA only).
Results go to a JSON file and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from dlrm_deploy import contract as C

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8": 2e-2}  # max abs error of the probability
GPU_ONLY = "needs CUDA (running on the CPU): CUDA graphs and FBGEMM's inference TBE capture/run GPU work only"
TORCH_BACKENDS = ("torch", "torch+fbgemm", "torch+fbgemm+cudagraph", "torch+fbgemm+compile", "torch+cudagraph")


@dataclass
class Row:
    """One benchmarked way of running the model. Times in milliseconds per batch."""

    name: str
    backend: str
    dtype: str
    variant: str = ""
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs: int = 0
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    ok: bool | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_best_torch: float | None = None
    note: str = ""
    skipped: str = ""
    extra: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.3f} GiB"


# ------------------------------------------------------------------------------------------------
# Timing


def time_torch(fn, runs: int, warmup: int, cuda: bool) -> dict:
    """Times fn() ``runs`` times after ``warmup`` calls. CUDA: events around each call on the current
    stream; CPU: perf_counter. Returns {median_ms, min_ms, max_ms, runs}."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def time_ort(sess, feeds: dict, runs: int, warmup: int) -> dict:
    """Times an OrtSession on feeds copied to its device once (synchronised wall-clock per run)."""
    r = sess.time_runs(feeds, runs=runs, warmup=warmup)
    return {k: r[k] for k in ("median_ms", "min_ms", "max_ms", "runs")}


class BudgetExceeded(Exception):
    """Raised inside a ``deadline`` block when its wall-clock budget runs out."""


@contextlib.contextmanager
def deadline(seconds: float | None):
    """Raises BudgetExceeded in the block after ``seconds`` of wall-clock time (SIGALRM; on the main
    thread of a POSIX process only, elsewhere the block runs unbounded). The exception lands at the
    next Python bytecode, so a long call into C finishes first."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise BudgetExceeded(f"over the {seconds:g} s budget")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------
# Host and GPU memory


def _proc_status_bytes(key: str) -> int | None:
    """A VmRSS / VmHWM line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Resets this process's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_bytes("VmHWM") is not None
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def host_peak(fn):
    """Runs fn() and returns (its result, host memory of this process around it): rss_before,
    peak (RSS high-water during the call), increment (peak - rss_before), rss_after, method.
    method "VmHWM" is exact (the high-water mark is reset first); "ru_maxrss" is a lower bound of
    the increment (ru_maxrss only moves when the call goes above the process's earlier peak)."""
    before = _proc_status_bytes("VmRSS")
    exact = _reset_rss_peak()
    ru0 = _ru_maxrss_bytes()
    result = fn()
    if exact:
        peak, method = _proc_status_bytes("VmHWM"), "VmHWM"
    else:
        before = before if before is not None else ru0
        peak, method = max(_ru_maxrss_bytes(), before), "ru_maxrss (lower bound)"
    return result, {"rss_before": before, "peak": peak, "increment": peak - before,
                    "rss_after": _proc_status_bytes("VmRSS"), "method": method}


def gpu_free_bytes() -> int | None:
    """Free memory of the current CUDA device (torch.cuda.mem_get_info), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.mem_get_info()[0])


# ------------------------------------------------------------------------------------------------
# Outputs and files


def compare(got, want) -> tuple[float, float]:
    """(max abs error, max error relative to max |want|) of two arrays."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    if got.shape != want.shape:
        raise ValueError(f"output shape {got.shape} != reference {want.shape}")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    return err, err / max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)


def onnx_feeds(names: list[str], dense, indices, offsets) -> dict:
    """Feeds for a DLRM ONNX file: dense, indices_t..., offsets_t... in the model's input order."""
    values = [dense] + list(indices) + list(offsets)
    if len(names) != len(values):
        raise ValueError(f"model has {len(names)} inputs, inputs have {len(values)} tensors")
    return {n: v.detach().cpu().numpy() for n, v in zip(names, values)}


def export_stock(model, example, path: str) -> None:
    """The model exported by torch.onnx without our op (dynamic batch and bag lengths)."""
    import logging
    import warnings

    import torch

    auto = torch.export.Dim.AUTO
    ds = torch.utils._pytree.tree_map(lambda t: {0: auto}, tuple(example))
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(model, tuple(example), dynamo=True, dynamic_shapes=ds, opset_version=18,
                                     verbose=False)
            prog.save(path, external_data=True)
    finally:
        quiet.setLevel(level)


def with_variant(src: str, dst: str, variant: str, prefetch_distance: int | None = None,
                 check: str | None = None, overlap: bool = False) -> None:
    """Copies the ONNX file src to dst with every op node's variant (and prefetch distance, bounds
    check mode) set, and with overlap the lookups beside the dense layers (export's overlap pass);
    external data stays where it is (dst must be in src's folder)."""
    import onnx

    from dlrm_deploy.export.overlap import apply_overlap

    m = onnx.load(src, load_external_data=False)
    for n in m.graph.node:
        if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE:
            for a in n.attribute:
                if a.name == "variant":
                    a.s = variant.encode()
                elif a.name == "prefetch_distance" and prefetch_distance is not None:
                    a.i = int(prefetch_distance)
            if check is not None:
                for a in [a for a in n.attribute if a.name == "check"]:
                    n.attribute.remove(a)
                n.attribute.append(onnx.helper.make_attribute("check", check))
    if overlap:
        apply_overlap(m)
    onnx.save(m, dst)


# ------------------------------------------------------------------------------------------------
# Child processes: our export (its own peak memory) and the stock row (under a wall-clock budget)


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
        rss_runtime = _proc_status_bytes("VmRSS")
        cfg = _config_from(job["config"])
        model = DLRM(cfg, seed=job["seed"]).eval()
        rss_model = _proc_status_bytes("VmRSS")
        status("export")
        result = (_child_export if job["kind"] == "export" else _child_stock)(job, cfg, model, status)
        result.update(rss_runtime=rss_runtime, rss_model=rss_model)
        status("done", result=result)
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        status("error", error=f"{type(e).__name__}: {e}"[:500])
        return 1


def _child_export(job: dict, cfg, model, status) -> dict:
    """Our export of the model, its host memory measured (VmHWM reset just before export_onnx)."""
    from dlrm_deploy.export import export_onnx, make_inputs

    h = job.get("hot_sample")
    sample = (make_inputs(cfg, h["batch"], pooling=h["pooling"], source=h["source"], seed=h["seed"])
              if h else None)
    example = make_inputs(cfg, 8, pooling=4, seed=1)
    info, mem = host_peak(lambda: export_onnx(
        model, example, job["path"], dtype=job["dtype"], hot_rows_from=sample, validate=job["validate"],
        progress=lambda m: _say(f"    [{job['name']}] " + m.replace("\n", f"\n    [{job['name']}] "))))
    return {"pinned_rows": info.pinned_rows, "weight_bytes": info.weight_bytes, "seconds": info.seconds,
            "memory": mem}


def _child_stock(job: dict, cfg, model, status) -> dict:
    """The stock-exporter row: export, session, check against the parent's reference, timed runs
    (one status line per run, so a timeout says how far it got)."""
    import torch

    from dlrm_deploy.export import make_inputs
    from dlrm_deploy.runtime import ort as ort_rt

    t = time.perf_counter()
    _, export_mem = host_peak(lambda: export_stock(model, make_inputs(cfg, 8, pooling=4, seed=1), job["path"]))
    status("session", export_s=time.perf_counter() - t, export_memory=export_mem)
    sess, session_mem = host_peak(lambda: ort_rt.ort_session(job["path"], device=job["device"],
                                                             **job["ort_options"]))
    status("check", session_memory=session_mem)
    inputs, check_inputs = torch.load(job["inputs"])
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
    out.update(median_ms=statistics.median(times), min_ms=min(times), max_ms=max(times), runs=len(times))
    return out


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
    code = ("import os, sys; from dlrm_deploy.runtime.bench_e2e import child_main; rc = child_main(sys.argv[1]); "
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


class _TBEModel:
    """DLRM forward with FBGEMM's inference TBE for the embeddings (the dense part is the model's)."""

    def __init__(self, model, dtype: str, device):
        import torch
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (BoundsCheckMode, EmbeddingLocation,
                                                                          PoolingMode)
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

        sparse = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8}
        if dtype not in sparse:
            raise ValueError(f"no FBGEMM TBE storage for {dtype}")
        self.model = model
        self.dim = model.config.dim
        specs = [("", eb.num_embeddings, eb.embedding_dim, sparse[dtype], EmbeddingLocation.DEVICE)
                 for eb in model.embeddings]
        self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=specs, pooling_mode=PoolingMode.SUM, bounds_check_mode=BoundsCheckMode.NONE,
            device=device, output_dtype=SparseType.FP32)
        self.tbe.fill_random_weights()
        splits = self.tbe.split_embedding_weights(split_scale_shifts=(dtype == "int8"))
        for eb, (w, scale_shift) in zip(model.embeddings, splits):
            src = eb.weight.detach().to(device)
            if dtype == "int8":
                lo, hi = src.amin(1), src.amax(1)
                scale = ((hi - lo) / 255.0).clamp_min(1e-12).half()
                bias = lo.half()
                codes = torch.clamp(torch.round((src - bias.float()[:, None]) / scale.float()[:, None]), 0, 255)
                w[:, :self.dim].copy_(codes.to(torch.uint8))
                scale_shift.copy_(torch.stack([scale, bias], 1).view(torch.uint8).reshape(scale_shift.shape))
            else:
                typed = src.to(torch.float32 if dtype == "fp32" else torch.float16).contiguous()
                if w.dtype == torch.uint8:  # rows as bytes (possibly padded)
                    t = typed.view(torch.uint8)
                    w[:, :t.shape[1]].copy_(t)
                else:
                    w[:, :self.dim].copy_(typed.to(w.dtype))

    def __call__(self, dense, indices, offsets):
        x = self.model.bottom(dense)
        pooled = self.tbe(indices, offsets).split(self.dim, dim=1)
        return self.model.top(self.model.interact(x, list(pooled)))


def tbe_inputs(indices, offsets, device):
    """Concatenated int32 ids and table-major offsets with a final end entry (T*B+1), TBE's form."""
    import torch

    ids = torch.cat([i.to(torch.int32) for i in indices]).to(device)
    starts, base = [], 0
    for i, o in zip(indices, offsets):
        starts.append(o.to(torch.int64) + base)
        base += i.numel()
    off = torch.cat([s.to(device) for s in starts] + [torch.tensor([base], device=device)]).to(torch.int32)
    return ids, off


def _check_output(row: Row, got, ref) -> bool:
    """Compares got (tensor or array) with the reference; sets the row's errors and ok."""
    if hasattr(got, "detach"):
        got = got.detach().float().cpu().numpy()
    row.max_abs_err, row.max_rel_err = compare(got, ref)
    row.ok = row.max_abs_err <= TOLERANCE[row.dtype]
    if not row.ok:
        row.note = "output differs from PyTorch; not timed"
    return row.ok


def _set_times(row: Row, t: dict) -> None:
    for k in ("median_ms", "min_ms", "max_ms", "runs"):
        setattr(row, k, t[k])


def eager_row(row: Row, fn, check_args, time_args, ref, runs: int, warmup: int, cuda: bool) -> Row:
    """fn(*check_args) checked against ref, then fn(*time_args) timed."""
    import torch

    with torch.no_grad():
        ok = _check_output(row, fn(*check_args), ref)
        if ok:
            _set_times(row, time_torch(lambda: fn(*time_args), runs, warmup, cuda))
    return row


def capture_graph(fn, args, warmup: int = 3):
    """Captures fn(*args) in a CUDA graph over static copies of args: warm-up calls on a side stream,
    then capture (torch.cuda.graphs' recipe). Returns (graph, static args, static output); replay()
    recomputes the output from whatever the static args hold."""
    import torch
    from torch.utils import _pytree

    static = _pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fn(*static)
    return graph, static, out


def _copy_into(static, args) -> bool:
    """Copies the tensors of args into the static ones; False (nothing copied) if a shape differs."""
    import torch
    from torch.utils import _pytree

    dst = [t for t in _pytree.tree_leaves(static) if isinstance(t, torch.Tensor)]
    src = [t for t in _pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
    if len(dst) != len(src) or any(d.shape != s.shape or d.dtype != s.dtype for d, s in zip(dst, src)):
        return False
    for d, s in zip(dst, src):
        d.copy_(s)
    return True


def graph_row(row: Row, fn, check_args, time_args, ref, runs: int, warmup: int) -> Row:
    """fn captured in a CUDA graph: captured on the check inputs, replayed and checked; the timing
    inputs copied into the static inputs (captured again when their shapes differ) and replay()
    timed between CUDA events; then the check inputs copied back and checked once more."""
    graph, static, out = capture_graph(fn, check_args)
    graph.replay()
    if not _check_output(row, out, ref):
        return row
    if not _copy_into(static, time_args):  # e.g. variable bag lengths: other id counts
        del graph, out
        graph, static, out = capture_graph(fn, time_args)
        row.extra["captures"] = 2
    _set_times(row, time_torch(graph.replay, runs, warmup, cuda=True))
    if _copy_into(static, check_args):
        graph.replay()
        err, _ = compare(out.detach().float().cpu().numpy(), ref)
        row.extra["recheck_max_abs_err"] = err
        if err > TOLERANCE[row.dtype]:
            row.ok = False
            row.note = "after the timed replays, the graph's output on the check inputs differs from PyTorch"
    return row


def compile_row(row: Row, fn, check_args, time_args, ref, runs: int, warmup: int, budget_s: float) -> Row:
    """torch.compile(fn, mode="reduce-overhead") (CUDA graph trees): compiled and warmed up within
    budget_s seconds of wall-clock time, checked on the check inputs, then timed per call."""
    import torch

    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", lambda: None)

    def forward(*args):  # a plain function: dynamo traces into fn (a module or any callable object)
        return fn(*args)

    compiled = torch.compile(forward, mode="reduce-overhead")

    def call(args):
        mark()
        return compiled(*args)

    t0 = time.perf_counter()
    try:
        with deadline(budget_s), torch.no_grad():
            for _ in range(3):  # compile, then record the graph
                call(check_args)
            ok = _check_output(row, call(check_args), ref)
            for _ in range(3 if ok else 0):
                call(time_args)
    except BudgetExceeded:
        row.skipped = (f"torch.compile(mode='reduce-overhead'): compile + warm-up not done within the "
                       f"{budget_s:g} s budget (--compile-budget)")
        row.extra["compile_s"] = time.perf_counter() - t0
        return row
    row.extra["compile_s"] = time.perf_counter() - t0
    if ok:
        with torch.no_grad():
            _set_times(row, time_torch(lambda: call(time_args), runs, warmup, cuda=True))
    return row


def _guarded(row: Row, what: str, fn) -> Row:
    """Runs fn() (which fills row); an exception becomes the row's skip reason. Prints the outcome."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        row.skipped = f"{what}{type(e).__name__}: {e}"[:400]
    _say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                                (f"max err {row.max_abs_err:.2e}, " if row.max_abs_err is not None else "") +
                                (f"median {row.median_ms:.3f} ms" if row.median_ms is not None else "FAILED")))
    return row


@dataclass
class Bench:
    """What the rows share: options, the model, device and inputs (on the device), the reference."""

    args: argparse.Namespace
    cfg: object
    model: object
    device: str
    inputs: tuple
    check_inputs: tuple
    dev_inputs: tuple = ()
    dev_check: tuple = ()
    ref: np.ndarray | None = None
    ort_options: dict = field(default_factory=dict)
    workdir: str = ""
    batch: int = 0
    pooling: int | str = 0
    threads: int | None = None
    tdev: object = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def torch_rows(b: Bench) -> list[Row]:
    """The PyTorch rows after eager: FBGEMM TBE eager, in a CUDA graph and under torch.compile
    (reduce-overhead); nn.EmbeddingBag in a CUDA graph. Skipped with the reason on the CPU."""
    import torch

    a = b.args
    td = a.dtype if a.dtype != "bf16" else "fp16"  # FBGEMM's inference TBE has no bf16 storage
    graph_runs = a.graph_runs or max(a.runs, 50)
    fb = [] if a.no_fbgemm else [Row(f"PyTorch eager + FBGEMM TBE ({td})", "torch+fbgemm", td)]
    if not a.no_fbgemm and not a.no_cuda_graphs:
        fb.append(Row(f"PyTorch + FBGEMM TBE ({td}), CUDA graph", "torch+fbgemm+cudagraph", td))
    if not a.no_fbgemm and not a.no_compile:
        fb.append(Row(f"PyTorch + FBGEMM TBE ({td}), torch.compile reduce-overhead", "torch+fbgemm+compile", td))
    plain = None if a.no_cuda_graphs else Row("PyTorch (nn.EmbeddingBag fp32), CUDA graph", "torch+cudagraph", "fp32")
    rows = fb + ([plain] if plain else [])
    if not b.cuda:
        for r in rows:
            r.skipped = GPU_ONLY
            _say(f"    {r.name}: skipped ({r.skipped})")
        return rows
    model = b.model.to(b.tdev)
    try:
        tbe = None
        if fb:
            try:
                tbe = _TBEModel(model, td, b.tdev)
            except Exception as e:  # noqa: BLE001 - e.g. fbgemm_gpu not installed
                for r in fb:
                    r.skipped = f"FBGEMM TBE: {type(e).__name__}: {e}"[:300]
                    _say(f"    {r.name}: skipped ({r.skipped})")
        if tbe is not None:
            (d, i, o), (cd, ci, co) = b.dev_inputs, b.dev_check
            targs, cargs = (d, *tbe_inputs(i, o, b.tdev)), (cd, *tbe_inputs(ci, co, b.tdev))
            for r in fb:
                if r.backend == "torch+fbgemm":
                    _guarded(r, "", lambda r=r: eager_row(r, tbe, cargs, targs, b.ref, a.runs, a.warmup, True))
                elif r.backend == "torch+fbgemm+cudagraph":
                    _guarded(r, "CUDA graph capture/replay: ",
                             lambda r=r: graph_row(r, tbe, cargs, targs, b.ref, graph_runs, a.warmup))
                else:
                    try:
                        _guarded(r, "torch.compile failed: ", lambda r=r: compile_row(
                            r, tbe, cargs, targs, b.ref, graph_runs, a.warmup, a.compile_budget))
                    finally:
                        if "torch._dynamo" in sys.modules:  # drop compiled code and its graph pools
                            torch._dynamo.reset()
            del tbe, targs, cargs
            torch.cuda.empty_cache()
        if plain is not None:
            _guarded(plain, "CUDA graph capture/replay: ",
                     lambda: graph_row(plain, model, b.dev_check, b.dev_inputs, b.ref, graph_runs, a.warmup))
    finally:
        b.model.cpu()
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------
# ONNX Runtime rows


def ort_row(b: Bench, name: str, backend: str, dtype: str, path: str, variant: str = "",
            runs: int | None = None, cuda_graph: bool = False) -> Row:
    """One ONNX Runtime row: session (its host and GPU memory measured), check, timed runs
    (cuda_graph: replays of the session's captured CUDA graph)."""
    from dlrm_deploy.runtime import ort as ort_rt

    row = Row(name, backend, dtype, variant)
    runs = runs or b.args.runs
    try:
        free0 = gpu_free_bytes() if b.cuda else None
        sess, row.extra["session_host"] = host_peak(
            lambda: ort_rt.ort_session(path, device=b.device, cuda_graph=cuda_graph, **b.ort_options))
        if b.cuda:
            row.extra["session_gpu_bytes"] = free0 - gpu_free_bytes()
        got = sess.run(onnx_feeds(sess.input_names, *b.check_inputs))[0]
        sh = row.extra["session_host"]  # the high-water mark was reset before the session: now + first run
        if sh["method"] == "VmHWM":  # e.g. external data memory-mapped by the session is only read here
            sh["peak_through_first_run"] = _proc_status_bytes("VmHWM")
            sh["increment_through_first_run"] = sh["peak_through_first_run"] - sh["rss_before"]
        if b.cuda:
            row.extra["session_gpu_bytes_after_run"] = free0 - gpu_free_bytes()
        row.max_abs_err, row.max_rel_err = compare(got, b.ref)
        row.ok = row.max_abs_err <= TOLERANCE[dtype]
        if not row.ok:
            row.note = "output differs from PyTorch; not timed"
        else:
            _set_times(row, time_ort(sess, onnx_feeds(sess.input_names, *b.inputs), runs, min(b.args.warmup, runs)))
        del sess
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        row.skipped = f"{type(e).__name__}: {e}"[:300]
    _say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                                f"max err {row.max_abs_err:.2e}, " +
                                (f"median {row.median_ms:.3f} ms" if row.median_ms is not None else "FAILED")))
    return row


def _child_job(b: Bench, kind: str, path: str, **kw) -> dict:
    return dict(kind=kind, config=dataclasses.asdict(b.cfg), seed=b.args.seed, path=path, device=b.device,
                threads=b.ort_options.get("intra_op_num_threads"), **kw)


def stock_row(b: Bench, prov: str) -> Row:
    """The stock torch.onnx export in ORT, in a child process under --stock-budget seconds."""
    import torch

    a = b.args
    row = Row(f"ORT {prov}, stock export (fp32)", "ort-stock", "fp32")
    inputs_path, ref_path = os.path.join(b.workdir, "stock_inputs.pt"), os.path.join(b.workdir, "stock_ref.npy")
    torch.save((b.inputs, b.check_inputs), inputs_path)
    np.save(ref_path, b.ref)
    runs = a.stock_runs or a.runs
    job = _child_job(b, "stock", os.path.join(b.workdir, "stock.onnx"), inputs=inputs_path, reference=ref_path,
                     ort_options=b.ort_options, runs=runs, warmup=min(a.warmup, runs), tolerance=TOLERANCE["fp32"])
    r = run_child(job, b.workdir, budget_s=a.stock_budget)
    row.extra = {k: r[k] for k in ("export_s", "export_memory", "session_memory", "rss_runtime", "rss_model")
                 if k in r}
    row.extra["budget_s"] = a.stock_budget
    if r.get("timed_out"):
        row.skipped = f"timed out after {r['elapsed_s']:.3g} s (budget {r['budget_s']:g} s; during {r['stage']}" + \
                      (f", {r['done']} of {runs} runs done)" if r.get("done") else ")")
        row.extra.update(timed_out=True, stage=r["stage"])
    elif "error" in r:
        row.skipped = r["error"][:300]
    else:
        row.max_abs_err, row.max_rel_err, row.ok = r["max_abs_err"], r["max_rel_err"], r["ok"]
        if r["ok"]:
            _set_times(row, r)
        else:
            row.note = "output differs from PyTorch; not timed"
    row.note = (row.note + "; " if row.note else "") + "run in a child process (budget: export + session + runs)"
    _say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                                f"max err {row.max_abs_err:.2e}, " +
                                (f"median {row.median_ms:.3f} ms" if row.median_ms is not None else "FAILED")))
    return row


def export_ours(b: Bench, layouts: list[str]) -> dict[str, tuple[str, dict]]:
    """Our export, one child process per layout ("off": plain, "on": hot rows profiled from a fresh
    sample), run side by side; a child's peak host memory is its own export's. Returns
    {layout: (path, the child's result)}."""
    from concurrent.futures import ThreadPoolExecutor

    a = b.args

    def one(layout):
        name = "dlrm_deploy" if layout == "off" else "dlrm_deploy_hot"
        sample = (dict(batch=b.batch, pooling=b.pooling, source=a.indices, seed=a.seed + 300)
                  if layout == "on" else None)
        job = _child_job(b, "export", os.path.join(b.workdir, f"{name}.onnx"), name=name, dtype=a.dtype,
                         hot_sample=sample, validate=b.cfg.table_bytes() < (1 << 30))
        return job["path"], run_child(job, b.workdir)

    t = time.perf_counter()
    with ThreadPoolExecutor(len(layouts)) as pool:
        out = dict(zip(layouts, pool.map(one, layouts)))
    for layout, (_, r) in out.items():
        what = "plain" if layout == "off" else "hot rows"
        if "error" in r:
            raise RuntimeError(f"export ({what}) failed: {r['error']}")
        m = r["memory"]
        _say(f"    exported ({what}) in {r['seconds'].get('total', 0):.1f}s; pinned rows per table {r['pinned_rows']}; "
             f"peak host RSS {_gib(m['peak'])} (model built: {_gib(r['rss_model'])}, runtime alone: "
             f"{_gib(r['rss_runtime'])}; {m['method']})")
    _say(f"    export step done in {time.perf_counter() - t:.1f}s" +
         (" (both layouts side by side)" if len(out) > 1 else ""))
    return out


def probe_layouts(b: Bench, plain: str, hot: str, variant: str, check: str) -> dict:
    """Times our ORT session on the plain and the hot-row layouts (same inputs, --hot-probe-runs runs
    each, alternating twice) and keeps the faster. Returns {"off_ms", "on_ms", "chosen", "reason"}."""
    from dlrm_deploy.runtime import ort as ort_rt

    a = b.args
    sessions, out = {}, {}
    for key, src in (("off", plain), ("on", hot)):
        path = os.path.join(b.workdir, f"probe_{key}.onnx")
        with_variant(src, path, variant, check=check)
        sessions[key] = ort_rt.ort_session(path, device=b.device, **b.ort_options)
        err, _ = compare(sessions[key].run(onnx_feeds(sessions[key].input_names, *b.check_inputs))[0], b.ref)
        if err > TOLERANCE[a.dtype]:
            return {"chosen": "off", "reason": f"the hot-row layout's output differs from PyTorch (max err {err:.2e})"}
    times = {"off": [], "on": []}
    n = max(1, a.hot_probe_runs // 2)
    for _ in range(2):
        for key, sess in sessions.items():
            times[key].append(time_ort(sess, onnx_feeds(sess.input_names, *b.inputs), n, min(a.warmup, n))["median_ms"])
    out = {"off_ms": min(times["off"]), "on_ms": min(times["on"]), "runs": 2 * n}
    out["chosen"] = "on" if out["on_ms"] < out["off_ms"] else "off"
    out["reason"] = (f"timed probe ({variant}, check={check}): hot rows {out['on_ms']:.3f} ms, "
                     f"off {out['off_ms']:.3f} ms")
    return out


def first_variant_rows(b: Bench, prov: str, src: str, path: str, v: str, chk: str, label: str,
                       hot: str) -> list[Row]:
    """The GPU-only rows of the first variant: CUDA graph, and the lookups overlapped with the dense
    layers (inline and in a CUDA graph)."""
    a = b.args
    overlapped = os.path.join(b.workdir, f"{os.path.basename(src)[:-5]}_{v}_{chk}_overlap.onnx")
    with_variant(src, overlapped, v, check=chk, overlap=True)
    specs = [] if a.no_cuda_graphs else [("CUDA graph", path, True)]
    specs.append(("overlap", overlapped, False))
    if not a.no_cuda_graphs:
        specs.append(("overlap, CUDA graph", overlapped, True))
    rows = []
    for what, p, graph in specs:
        row = ort_row(b, f"ORT {prov} + dlrm_deploy op ({a.dtype}, {label}, {what})", "ort-dlrm_deploy", a.dtype, p, v,
                      cuda_graph=graph)
        row.extra["hot_rows"] = hot
        rows.append(row)
    return rows


def ours_rows(b: Bench, prov: str, variants: list[str], checks: list[str]) -> tuple[list[Row], dict]:
    """Our export (and, with --hot-rows, the hot-row layout), then one ORT row per check mode and
    variant. Returns (rows, what the JSON records about the export, hot rows and memory)."""
    a = b.args
    mode = a.hot_rows
    if mode == "auto" and a.indices == "uniform":
        mode, why = "off", "uniform indices: no hot rows to profile"
    else:
        why = {"on": "--hot-rows on", "off": "--hot-rows off (the default)"}.get(mode, "")
    _say(f"[3] our op in ORT {prov}: export ({a.dtype}; hot rows {mode}{': ' + why if why else ''}) ...")
    exports = export_ours(b, {"off": ["off"], "on": ["on"], "auto": ["off", "on"]}[mode])
    hot = {"mode": a.hot_rows, "chosen": mode, "reason": why}
    if mode == "auto":
        probe = probe_layouts(b, exports["off"][0], exports["on"][0], variants[0], checks[0])
        hot.update(probe, chosen=probe["chosen"])
        _say(f"    hot rows auto: {probe['reason']} -> {probe['chosen']}")
    src, info = exports[hot["chosen"]]
    rows = []
    for chk in checks:
        for v in variants:
            path = os.path.join(b.workdir, f"{os.path.basename(src)[:-5]}_{v}_{chk}.onnx")
            with_variant(src, path, v, check=chk)
            label = v if chk == "checked" else f"{v}, check={chk}"
            row = ort_row(b, f"ORT {prov} + dlrm_deploy op ({a.dtype}, {label})", "ort-dlrm_deploy", a.dtype, path, v)
            row.extra["hot_rows"] = hot["chosen"]
            rows.append(row)
            if b.cuda and v == variants[0]:
                rows += first_variant_rows(b, prov, src, path, v, chk, label, hot["chosen"])
    export = {"pinned_rows": info["pinned_rows"], "weight_bytes": info["weight_bytes"], "seconds": info["seconds"],
              "memory": {k: dict(r["memory"], rss_model=r["rss_model"], rss_runtime=r["rss_runtime"])
                         for k, (_, r) in exports.items()}}
    return rows, {"export": export, "hot_rows": hot}


# ------------------------------------------------------------------------------------------------
# Summary, table, plot


def memory_summary(b: Bench, ours: list[Row], export: dict) -> dict:
    """Export peak, session creation peak and GPU memory of a session next to the table bytes (and
    the ratios the targets are written in)."""
    stored = export["weight_bytes"]
    model_bytes = b.cfg.table_bytes()
    layout = "off" if "off" in export["memory"] else "on"
    em = export["memory"][layout]
    mem = {"table_bytes": stored, "model_table_bytes_fp32": model_bytes,
           "export": {"measured": f"child process that builds the model and exports it ({layout} hot rows); "
                                  f"{em['method']} reset just before export_onnx",
                      "peak_rss": em["peak"], "rss_model_built": em["rss_model"], "rss_runtime": em["rss_runtime"],
                      "increment": em["increment"], "peak_x_table_bytes": em["peak"] / model_bytes,
                      "peak_without_runtime_x_table_bytes": (em["peak"] - em["rss_runtime"]) / model_bytes}}
    first = next((r for r in ours if "session_host" in r.extra), None)
    if first is not None:
        sh = first.extra["session_host"]
        mem["session"] = {"measured": f"this process, {first.name}: RSS high-water during ort_session() minus "
                                      f"RSS before ({sh['method']})",
                          "increment": sh["increment"], "peak_rss": sh["peak"], "rss_before": sh["rss_before"],
                          "increment_x_table_bytes": sh["increment"] / stored,
                          "increment_through_first_run": sh.get("increment_through_first_run"),
                          "increment_through_first_run_x_table_bytes":
                              sh["increment_through_first_run"] / stored if "increment_through_first_run" in sh
                              else None}
    if first is not None and "session_gpu_bytes" in first.extra:
        g = first.extra["session_gpu_bytes"]
        g2 = first.extra.get("session_gpu_bytes_after_run", g)
        mem["gpu"] = {"measured": "torch.cuda.mem_get_info free bytes before ort_session() minus after it "
                                  "(and after the first run); device-wide",
                      "after_creation": g, "after_first_run": g2, "x_table_bytes": g2 / stored}
    else:
        mem["gpu"] = {"skipped": "no CUDA session (running on the CPU)"}
    return mem


def print_memory(mem: dict) -> None:
    """The memory summary as lines with the targets."""
    e = mem["export"]
    _say(f"memory (tables: {_gib(mem['table_bytes'])} as stored in the ONNX, {_gib(mem['model_table_bytes_fp32'])} "
         f"fp32 in the PyTorch model):")
    _say(f"  export peak host RSS {_gib(e['peak_rss'])} = {e['peak_x_table_bytes']:.2f}x the model's tables "
         f"({e['peak_without_runtime_x_table_bytes']:.2f}x without the {_gib(e['rss_runtime'])} of Python + "
         f"libraries; model built: {_gib(e['rss_model_built'])})   target <= 2.5x")
    if "session" in mem:
        s = mem["session"]
        _say(f"  ORT session creation: host RSS +{_gib(s['increment'])} at its peak = "
             f"{s['increment_x_table_bytes']:.2f}x the tables ({s['measured'].split(':')[0]})   target <= 1.5x")
        if s.get("increment_through_first_run") is not None:
            _say(f"    through the first run: host RSS +{_gib(s['increment_through_first_run'])} at its peak = "
                 f"{s['increment_through_first_run_x_table_bytes']:.2f}x the tables (memory-mapped external data "
                 f"is counted once it is read)")
    g = mem["gpu"]
    if "skipped" in g:
        _say(f"  GPU memory of a session: skipped ({g['skipped']})")
    else:
        _say(f"  GPU memory of a session: {_gib(g['after_creation'])} after creation, {_gib(g['after_first_run'])} "
             f"after the first run = {g['x_table_bytes']:.2f}x the tables   target <= 1.10x")


def summarize(rows: list[Row], eager: Row) -> dict:
    """Speedups vs eager and vs the best PyTorch row; the best PyTorch row and ours in the summary."""
    for r in rows:
        if r.median_ms and eager.median_ms:
            r.speedup_vs_eager = eager.median_ms / r.median_ms
    timed = [r for r in rows if r.median_ms is not None and r.ok]
    torch_timed = [r for r in timed if r.backend in TORCH_BACKENDS]
    best = min(torch_timed, key=lambda r: r.median_ms) if torch_timed else None
    ours = [r for r in timed if r.backend == "ort-dlrm_deploy"]
    default = next((r for r in ours if r.variant == "auto" and "check=" not in r.name), ours[0] if ours else None)
    fastest = min(ours, key=lambda r: r.median_ms) if ours else None
    if best is not None:
        for r in timed:
            r.speedup_vs_best_torch = best.median_ms / r.median_ms
    pick = lambda r: None if r is None else {"name": r.name, "median_ms": r.median_ms,  # noqa: E731
                                             "speedup_vs_best_pytorch": r.speedup_vs_best_torch}
    return {"best_pytorch": best.name if best else None, "best_pytorch_ms": best.median_ms if best else None,
            "ours": pick(default), "ours_fastest": pick(fastest)}


def print_table(rows: list[Row]) -> None:
    """Results as an aligned text table."""
    head = (f"{'row':<58} {'median ms':>10} {'min':>8} {'max':>8} {'vs eager':>9} {'vs best pt':>10} "
            f"{'max err':>9}  check")
    _say(head)
    _say("-" * len(head))
    for r in rows:
        if r.skipped:
            _say(f"{r.name:<58} skipped: {r.skipped}")
            continue
        f = (lambda v, w=8, p=3: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}")
        sp = f"{r.speedup_vs_eager:>8.2f}x" if r.speedup_vs_eager else f"{'-':>9}"
        sb = f"{r.speedup_vs_best_torch:>9.2f}x" if r.speedup_vs_best_torch else f"{'-':>10}"
        err = f"{r.max_abs_err:>9.1e}" if r.max_abs_err is not None else f"{'-':>9}"
        _say(f"{r.name:<58} {f(r.median_ms, 10)} {f(r.min_ms)} {f(r.max_ms)} {sp} {sb} {err}  "
             f"{'ok' if r.ok else 'FAIL' if r.ok is False else '-'}")


def environment() -> dict:
    """GPU name, driver and package versions for the JSON."""
    import onnx
    import onnxruntime
    import torch

    import dlrm_deploy

    env = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "dlrm_deploy": dlrm_deploy.__version__,
           "ort_providers": onnxruntime.get_available_providers(), "host": platform.node()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            env["driver"] = None
    try:
        import fbgemm_gpu

        env["fbgemm_gpu"] = getattr(fbgemm_gpu, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        env["fbgemm_gpu"] = None
    return env


def plot(rows: list[Row], path: str, title: str) -> None:
    """Horizontal bars: median ms with min..max whiskers, speedup over eager as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r.median_ms is not None]
    if not rs:
        return
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rs) + 1.5))
    y = np.arange(len(rs))
    med = np.array([r.median_ms for r in rs])
    lo = med - np.array([r.min_ms for r in rs])
    hi = np.array([r.max_ms for r in rs]) - med
    colors = ["#888888" if r.backend.startswith("torch") and "fbgemm" not in r.backend else
              "#d9822b" if "stock" in r.backend or "fbgemm" in r.backend else "#2b7bd9" for r in rs]
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(y, [r.name for r in rs])
    ax.invert_yaxis()
    ax.set_xlabel("ms per batch (median, whiskers min..max)")
    ax.set_title(title, fontsize=10)
    for yi, r in zip(y, rs):
        if r.speedup_vs_eager:
            ax.text(r.median_ms, yi, f"  {r.speedup_vs_eager:.2f}x", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dlrm-deploy bench e2e`` (also usable alone: ``python -m dlrm_deploy.runtime.bench_e2e``)."""
    parser.add_argument("--config", default="paper", help="DLRM config: paper or small (default paper)")
    parser.add_argument("--rows", type=int, default=None, help="rows of every table (default: the config's)")
    parser.add_argument("--tables", type=int, default=None, help="number of tables (default: the config's)")
    parser.add_argument("--dim", type=int, default=None, help="embedding dim (default: the config's)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's, paper 2048)")
    parser.add_argument("--pooling", default=None, help="lookups per bag (int) or var:L (default: the config's)")
    parser.add_argument("--dtype", default="fp32", choices=C.DTYPES, help="our op's table storage (default fp32)")
    parser.add_argument("--indices", default="uniform", help="uniform | zipf:ALPHA | trace:FILE")
    parser.add_argument("--variants", default="auto,baseline,occupancy,prefetch,l2pin,combined",
                        help="comma-separated kernel variants of our op")
    parser.add_argument("--hot-rows", choices=("auto", "on", "off"), default="off",
                        help="hot-row layout (tables reordered by frequency from a fresh sample of --indices, "
                             "ids remapped, hot rows pinned): off (default), on, or auto: export both and keep "
                             "the faster in a timed probe (uniform indices: off)")
    parser.add_argument("--hot-probe-runs", type=int, default=10, help="timed runs per layout of the auto probe")
    parser.add_argument("--checks", default="checked",
                        help="comma list of the op's bounds-check modes to time (checked|deferred|unchecked)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per row (>= 30 for reported numbers)")
    parser.add_argument("--graph-runs", type=int, default=None,
                        help="timed runs of the CUDA-graph and torch.compile rows (default max(--runs, 50))")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: cuda when both torch and onnxruntime have it")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch and ONNX Runtime (default: 1 with --device cpu, so "
                             "CPU smoke timings are stable on shared machines; the libraries' own on cuda)")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock-exporter ONNX row")
    parser.add_argument("--stock-runs", type=int, default=None,
                        help="timed runs of the stock-exporter row (default --runs; its per-bag Loop is slow "
                             "at batch 2048)")
    parser.add_argument("--stock-budget", type=float, default=120.0,
                        help="wall-clock seconds for the stock row's export + session creation + runs (a child "
                             "process, killed when over; default 120)")
    parser.add_argument("--no-fbgemm", action="store_true", help="skip the FBGEMM TBE rows")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="skip the CUDA-graph rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--compile-budget", type=float, default=300.0,
                        help="wall-clock seconds for torch.compile's compile + warm-up (default 300)")
    parser.add_argument("--workdir", default=None, help="folder for the ONNX files (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write results here (default results/e2e_<config>_<dtype>.json)")
    parser.add_argument("--plot", default=None, help="write the PNG plot here (default: the JSON path with .png)")
    parser.add_argument("--seed", type=int, default=0)


def _setup(args: argparse.Namespace) -> Bench:
    """Config, device, threads and inputs from the options."""
    import torch

    from dlrm_deploy.export import DLRM, get_config, make_inputs
    from dlrm_deploy.runtime import ort as ort_rt

    over = {k: v for k, v in (("rows", args.rows), ("num_tables", args.tables), ("dim", args.dim)) if v}
    cfg = get_config(args.config, **over)
    batch = args.batch or cfg.batch
    pooling = cfg.pooling if args.pooling is None else (int(args.pooling) if str(args.pooling).isdigit()
                                                         else args.pooling)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and ort_rt.cuda_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else None)
    ort_options = {}
    if threads:
        torch.set_num_threads(threads)
        ort_options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    if device == "cuda":  # like for like: PyTorch's fp32 matmuls do not use TF32 by default, ORT's CUDA provider does
        ort_options["provider_options"] = {"use_tf32": "0"}
    _say(f"bench e2e: config {cfg.name} ({cfg.num_tables} tables x {max(cfg.table_rows)} rows x {cfg.dim}), "
         f"batch {batch}, pooling {pooling}, indices {args.indices}, tables {args.dtype}, device {device}, "
         f"runs {args.runs} (+{args.warmup} warm-up)")
    t0 = time.perf_counter()
    model = DLRM(cfg, seed=args.seed).eval()
    _say(f"  built the model ({cfg.table_bytes() / 2**30:.2f} GiB of fp32 tables) in {time.perf_counter() - t0:.1f}s")
    inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 100)
    check_inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 200)
    return Bench(args, cfg, model, device, inputs, check_inputs, ort_options=ort_options, batch=batch,
                 pooling=pooling, threads=threads, tdev=torch.device(device))


def eager_reference(b: Bench) -> Row:
    """PyTorch eager on the device: the reference output (check inputs) and the eager row."""
    import torch

    _say("[1] PyTorch eager (nn.EmbeddingBag) ...")
    model = b.model.to(b.tdev)
    on_dev = lambda x: (x[0].to(b.tdev), [i.to(b.tdev) for i in x[1]], [o.to(b.tdev) for o in x[2]])  # noqa: E731
    b.dev_inputs, b.dev_check = on_dev(b.inputs), on_dev(b.check_inputs)
    with torch.no_grad():
        b.ref = model(*b.dev_check).float().cpu().numpy()
        t = time_torch(lambda: model(*b.dev_inputs), b.args.runs, b.args.warmup, b.cuda)
    row = Row("PyTorch eager (nn.EmbeddingBag fp32)", "torch", "fp32", ok=True, **t)
    _say(f"    median {row.median_ms:.3f} ms")
    b.model.cpu()
    if b.cuda:
        torch.cuda.empty_cache()
    return row


def _parse_list(text: str, known, what: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    for v in items:
        if v not in known:
            raise SystemExit(f"unknown {what} '{v}'; known: {known}")
    return items


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; prints progress, a table and the memory summary, writes JSON and PNG.
    Exit 1 when a row's output disagrees with PyTorch."""
    variants = _parse_list(args.variants, C.VARIANTS, "variant")
    checks = _parse_list(args.checks, C.CHECKS, "check mode")
    b = _setup(args)
    json_path = args.json or os.path.join("results", f"e2e_{b.cfg.name}_{args.dtype}.json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    prov = "CUDA" if b.cuda else "CPU"
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    b.workdir = args.workdir or tmp.name
    os.makedirs(b.workdir, exist_ok=True)
    try:
        eager = eager_reference(b)
        rows = [eager]
        if not args.no_stock:
            _say(f"[2] stock torch.onnx export (no custom op) in ORT {prov}, budget {args.stock_budget:g} s ...")
            rows.append(stock_row(b, prov))
        ours, export = ours_rows(b, prov, variants, checks)
        rows += ours
        _say("[4] PyTorch + FBGEMM TBE (eager, CUDA graph, torch.compile), PyTorch in a CUDA graph ...")
        rows += torch_rows(b)
    finally:
        if tmp is not None:
            tmp.cleanup()

    summary = summarize(rows, eager)
    memory = memory_summary(b, ours, export["export"])
    _say("")
    print_table(rows)
    _say("")
    if summary["ours"] and summary["best_pytorch"]:
        for key in ("ours", "ours_fastest"):
            o = summary[key]
            if key == "ours_fastest" and o["name"] == summary["ours"]["name"]:
                continue
            _say(f"{o['name']}: {o['speedup_vs_best_pytorch']:.2f}x the best PyTorch row "
                 f"({summary['best_pytorch']}, {summary['best_pytorch_ms']:.3f} ms)")
    print_memory(memory)
    cfg = b.cfg
    result = {"benchmark": "e2e", "environment": environment(),
              "config": {"name": cfg.name, "table_rows": list(cfg.table_rows), "dim": cfg.dim,
                         "num_dense": cfg.num_dense, "bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp),
                         "batch": b.batch, "pooling": b.pooling, "indices": args.indices, "dtype": args.dtype,
                         "device": b.device, "threads": b.threads, "runs": args.runs, "warmup": args.warmup,
                         "graph_runs": args.graph_runs or max(args.runs, 50), "stock_budget_s": args.stock_budget,
                         "compile_budget_s": args.compile_budget, "hot_rows": export["hot_rows"]["chosen"] == "on",
                         "pinned_rows": export["export"]["pinned_rows"]},
              "summary": summary, "memory": memory, "hot_rows": export["hot_rows"], "export": export["export"],
              "rows": [asdict(r) for r in rows]}
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, plot_path, f"DLRM {cfg.name}, batch {b.batch}, {args.indices}, tables {args.dtype}, {b.device} "
                          f"({result['environment'].get('gpu', platform.processor() or 'CPU')})")
    _say(f"\nwrote {json_path} and {plot_path}")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
