"""The ONNX Runtime rows of ``dlrm-deploy bench e2e``: the stock export (a child process under a
budget), and our export (child processes, one per hot-row layout) run once per kernel variant and
check mode, the first variant also in a CUDA graph and overlapped with the dense layers."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from .accuracy import TOLERANCE, compare, onnx_feeds
from .bench_child import run_child
from .bench_common import Bench, Row, check_output, gib, say, say_outcome, set_times
from .bench_files import with_variant
from .bench_memory import gpu_free_bytes, host_peak, proc_status_bytes
from .timing import time_ort


def ort_row(b: Bench, name: str, backend: str, dtype: str, path: str, variant: str = "",
            runs: int | None = None, cuda_graph: bool | str = False, priority: int = 0) -> Row:
    """One ONNX Runtime row: session (its host and GPU memory measured), check, timed runs
    (cuda_graph: replays of the session's captured CUDA graph). On CUDA the session runs on a
    stream of ours (priority: 0 = the default, -1 = high) and is timed with CUDA events on it, as
    the PyTorch rows are; the synchronised wall-clock time per run goes in extra["wall"]."""
    from dlrm_deploy.runtime import ort as ort_rt

    row = Row(name, backend, dtype, variant)
    runs = runs or b.args.runs
    stream = None
    try:
        free0 = gpu_free_bytes() if b.cuda else None
        if b.cuda:
            import torch

            stream = torch.cuda.Stream(device=b.tdev, priority=priority)
            row.extra["stream_priority"] = priority
        sess, row.extra["session_host"] = host_peak(
            lambda: ort_rt.ort_session(path, device=b.device, cuda_graph=cuda_graph, **b.ort_options,
                                       stream=None if stream is None else stream.cuda_stream))
        if b.cuda:
            row.extra["session_gpu_bytes"] = free0 - gpu_free_bytes()
        got = sess.run(onnx_feeds(sess.input_names, *b.check_inputs))[0]
        sh = row.extra["session_host"]  # the high-water mark was reset before the session: now + first run
        if sh["method"] == "VmHWM":  # e.g. external data memory-mapped by the session is only read here
            sh["peak_through_first_run"] = proc_status_bytes("VmHWM")
            sh["increment_through_first_run"] = sh["peak_through_first_run"] - sh["rss_before"]
        if b.cuda:
            row.extra["session_gpu_bytes_after_run"] = free0 - gpu_free_bytes()
        if check_output(row, got, b.ref):
            feeds, warmup = onnx_feeds(sess.input_names, *b.inputs), min(b.args.warmup, runs)
            if b.cuda:
                set_times(row, time_ort(sess, feeds, runs, warmup, events=True))
                row.extra["timer"] = "CUDA events on the session's stream"
                row.extra["wall"] = time_ort(sess, feeds, runs, warmup)
            else:
                set_times(row, time_ort(sess, feeds, runs, warmup))
        del sess
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        row.skipped = f"{type(e).__name__}: {e}"[:300]
    say_outcome(row)
    return row


def _child_job(b: Bench, kind: str, path: str, **kw) -> dict:
    return dict(kind=kind, config=dataclasses.asdict(b.cfg), seed=b.args.seed, path=path, device=b.device,
                ids=b.args.ids, threads=b.ort_options.get("intra_op_num_threads"), **kw)


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
            set_times(row, r)
        else:
            row.note = "output differs from PyTorch; not timed"
    row.note = (row.note + "; " if row.note else "") + "run in a child process (budget: export + session + runs)"
    say_outcome(row)
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
        say(f"    exported ({what}) in {r['seconds'].get('total', 0):.1f}s; pinned rows per table {r['pinned_rows']}; "
             f"peak host RSS {gib(m['peak'])} (model built: {gib(r['rss_model'])}, runtime alone: "
             f"{gib(r['rss_runtime'])}; {m['method']})")
    say(f"    export step done in {time.perf_counter() - t:.1f}s" +
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
    """The GPU-only rows of the first variant: CUDA graph, the lookups overlapped with the dense
    layers (inline and in a CUDA graph), and, where the export fused the dot interaction or the
    Linear chains, the same model with those as standard ops (CUDA graph)."""
    import onnx

    from dlrm_deploy.export.interaction import OP_TYPE
    from dlrm_deploy.export.mlp import OP_TYPE as MLP_OP_TYPE

    a = b.args
    stem = os.path.join(b.workdir, f"{os.path.basename(src)[:-5]}_{v}_{chk}")
    with_variant(src, f"{stem}_overlap.onnx", v, check=chk, overlap=True)
    op_types = {n.op_type for n in onnx.load(src, load_external_data=False).graph.node}
    fused = OP_TYPE in op_types
    # Overlapped rows run ORT's stream at high priority, so that the dense layers' blocks are
    # scheduled ahead of the lookups' remaining ones (the op's own stream has the default priority).
    graphs = not a.no_cuda_graphs
    # CUDA graph rows replay dlrm_deploy's capture of an ORT run; one row replays ONNX Runtime's own
    # graph mode through its run() for comparison (its host time per call is longer).
    specs = [("CUDA graph", path, True, 0), ("ORT's own CUDA graph", path, "ort", 0)] if graphs else []
    specs.append(("overlap", f"{stem}_overlap.onnx", False, -1))
    if graphs:
        specs.append(("overlap, CUDA graph", f"{stem}_overlap.onnx", True, -1))
    if graphs and fused:
        with_variant(src, f"{stem}_unfused.onnx", v, check=chk, fuse=False)
        specs.append(("interaction not fused, CUDA graph", f"{stem}_unfused.onnx", True, 0))
    if graphs and MLP_OP_TYPE in op_types:
        with_variant(src, f"{stem}_mlp_unfused.onnx", v, check=chk, fuse_mlp=False)
        specs.append(("Linear layers not fused, CUDA graph", f"{stem}_mlp_unfused.onnx", True, 0))
    rows = []
    for what, p, graph, priority in specs:
        row = ort_row(b, f"ORT {prov} + dlrm_deploy op ({a.dtype}, {label}, {what})", "ort-dlrm_deploy", a.dtype, p, v,
                      cuda_graph=graph, priority=priority)
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
    say(f"[3] our op in ORT {prov}: export ({a.dtype}; hot rows {mode}{': ' + why if why else ''}) ...")
    exports = export_ours(b, {"off": ["off"], "on": ["on"], "auto": ["off", "on"]}[mode])
    hot = {"mode": a.hot_rows, "chosen": mode, "reason": why}
    if mode == "auto":
        probe = probe_layouts(b, exports["off"][0], exports["on"][0], variants[0], checks[0])
        hot.update(probe, chosen=probe["chosen"])
        say(f"    hot rows auto: {probe['reason']} -> {probe['chosen']}")
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
