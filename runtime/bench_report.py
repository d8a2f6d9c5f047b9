"""The results of ``dlrm-deploy bench e2e``: speedups and the summary, the memory summary next to
the table bytes, the printed table and the PNG plot."""

from __future__ import annotations

import numpy as np

from .bench_common import TORCH_BACKENDS, Bench, Row, gib, say


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
    say(f"memory (tables: {gib(mem['table_bytes'])} as stored in the ONNX, {gib(mem['model_table_bytes_fp32'])} "
         f"fp32 in the PyTorch model):")
    say(f"  export peak host RSS {gib(e['peak_rss'])} = {e['peak_x_table_bytes']:.2f}x the model's tables "
         f"({e['peak_without_runtime_x_table_bytes']:.2f}x without the {gib(e['rss_runtime'])} of Python + "
         f"libraries; model built: {gib(e['rss_model_built'])})   target <= 2.5x")
    if "session" in mem:
        s = mem["session"]
        say(f"  ORT session creation: host RSS +{gib(s['increment'])} at its peak = "
             f"{s['increment_x_table_bytes']:.2f}x the tables ({s['measured'].split(':')[0]})   target <= 1.5x")
        if s.get("increment_through_first_run") is not None:
            say(f"    through the first run: host RSS +{gib(s['increment_through_first_run'])} at its peak = "
                 f"{s['increment_through_first_run_x_table_bytes']:.2f}x the tables (memory-mapped external data "
                 f"is counted once it is read)")
    g = mem["gpu"]
    if "skipped" in g:
        say(f"  GPU memory of a session: skipped ({g['skipped']})")
    else:
        say(f"  GPU memory of a session: {gib(g['after_creation'])} after creation, {gib(g['after_first_run'])} "
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
                                             "speedup_vs_best_pytorch": r.speedup_vs_best_torch,
                                             "wall_ms": wall_ms(r)}
    out = {"best_pytorch": best.name if best else None, "best_pytorch_ms": best.median_ms if best else None,
           "best_pytorch_wall_ms": wall_ms(best), "ours": pick(default), "ours_fastest": pick(fastest)}
    walled = [r for r in ours if wall_ms(r) is not None]
    if walled and wall_ms(best) is not None:  # the same comparison on synchronised wall-clock times
        w = min(walled, key=wall_ms)
        out["ours_fastest_wall"] = {"name": w.name, "wall_ms": wall_ms(w), "speedup_vs_best_pytorch_wall":
                                    wall_ms(best) / wall_ms(w)}
    return out


def wall_ms(r: Row | None) -> float | None:
    """A GPU row's synchronised wall-clock median (extra["wall"]), next to its CUDA-event time."""
    return None if r is None else (r.extra.get("wall") or {}).get("median_ms")


def print_table(rows: list[Row]) -> None:
    """Results as an aligned text table."""
    head = (f"{'row':<58} {'median ms':>10} {'min':>8} {'max':>8} {'wall ms':>8} {'vs eager':>9} {'vs best pt':>10} "
            f"{'max err':>9}  check")
    say(head)
    say("-" * len(head))
    for r in rows:
        if r.skipped:
            say(f"{r.name:<58} skipped: {r.skipped}")
            continue
        f = (lambda v, w=8, p=3: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}")
        sp = f"{r.speedup_vs_eager:>8.2f}x" if r.speedup_vs_eager else f"{'-':>9}"
        sb = f"{r.speedup_vs_best_torch:>9.2f}x" if r.speedup_vs_best_torch else f"{'-':>10}"
        err = f"{r.max_abs_err:>9.1e}" if r.max_abs_err is not None else f"{'-':>9}"
        say(f"{r.name:<58} {f(r.median_ms, 10)} {f(r.min_ms)} {f(r.max_ms)} {f(wall_ms(r))} {sp} {sb} {err}  "
             f"{'ok' if r.ok else 'FAIL' if r.ok is False else '-'}")



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
