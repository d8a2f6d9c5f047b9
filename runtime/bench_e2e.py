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
timed; times are the median (and min/max) of the runs after warm-up. On a GPU every row is timed the
same way: CUDA events on its stream around each call (ONNX Runtime runs on a stream of ours and
returns without synchronising), the host waiting for the end event; each GPU row also records its
synchronised wall-clock time per call (``extra["wall"]``, the table's "wall ms"). On the CPU: wall-clock.

Memory, next to the table bytes: our export's peak host RSS (the export runs in a child process that
only builds the model and exports it), ONNX Runtime session creation's host RSS high-water above the
RSS before it, and the GPU memory a session takes (free device memory before/after, CUDA only).
Results go to a JSON file and a PNG plot.

The parts: bench_common (rows, state), bench_torch and bench_ort (the rows), bench_child (child
processes), bench_report (summary, table, plot); timers in timing.py, FBGEMM in fbgemm_tbe.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict

from dlrm_deploy import contract as C

from .bench_common import Bench, Row, say
from .bench_env import environment
from .bench_ort import ours_rows, stock_row
from .bench_report import memory_summary, plot, print_memory, print_table, summarize
from .bench_torch import torch_rows
from .timing import time_torch


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
    parser.add_argument("--ids", choices=("int32", "int64"), default="int32",
                        help="dtype of the ids and offsets every row is fed, our export's inputs included "
                             "(default int32: FBGEMM's rows take int32 ids either way; the stock-exporter row "
                             "always int64)")
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
    ids = getattr(torch, args.ids)
    if max(cfg.table_rows) - 1 > torch.iinfo(ids).max:  # make_indices' rule, before the model is built
        raise SystemExit(f"--ids {args.ids}: tables of {max(cfg.table_rows)} rows need int64 ids (--ids int64)")
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
    say(f"bench e2e: config {cfg.name} ({cfg.num_tables} tables x {max(cfg.table_rows)} rows x {cfg.dim}), "
         f"batch {batch}, pooling {pooling}, indices {args.indices}, tables {args.dtype}, device {device}, "
         f"runs {args.runs} (+{args.warmup} warm-up)")
    t0 = time.perf_counter()
    model = DLRM(cfg, seed=args.seed).eval()
    say(f"  built the model ({cfg.table_bytes() / 2**30:.2f} GiB of fp32 tables) in {time.perf_counter() - t0:.1f}s")
    inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 100, index_dtype=ids)
    check_inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 200,
                               index_dtype=ids)
    return Bench(args, cfg, model, device, inputs, check_inputs, ort_options=ort_options, batch=batch,
                 pooling=pooling, threads=threads, tdev=torch.device(device))


def eager_reference(b: Bench) -> Row:
    """PyTorch eager on the device: the reference output (check inputs) and the eager row."""
    import torch

    say("[1] PyTorch eager (nn.EmbeddingBag) ...")
    model = b.model.to(b.tdev)
    on_dev = lambda x: (x[0].to(b.tdev), [i.to(b.tdev) for i in x[1]], [o.to(b.tdev) for o in x[2]])  # noqa: E731
    b.dev_inputs, b.dev_check = on_dev(b.inputs), on_dev(b.check_inputs)
    with torch.no_grad():
        b.ref = model(*b.dev_check).float().cpu().numpy()
        t = time_torch(lambda: model(*b.dev_inputs), b.args.runs, b.args.warmup, b.cuda)
    row = Row("PyTorch eager (nn.EmbeddingBag fp32)", "torch", "fp32", ok=True, **t)
    say(f"    median {row.median_ms:.3f} ms")
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



def _run_rows(b: Bench, variants: list[str], checks: list[str], prov: str) -> tuple[list[Row], list[Row], dict]:
    """Every row, in order: eager (the reference), stock, ours, the other PyTorch rows. Returns
    (all rows, our rows, what the JSON records about our export and hot rows)."""
    args = b.args
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    b.workdir = args.workdir or tmp.name
    os.makedirs(b.workdir, exist_ok=True)
    try:
        eager = eager_reference(b)
        rows = [eager]
        if not args.no_stock:
            say(f"[2] stock torch.onnx export (no custom op) in ORT {prov}, budget {args.stock_budget:g} s ...")
            rows.append(stock_row(b, prov))
        ours, export = ours_rows(b, prov, variants, checks)
        rows += ours
        say("[4] PyTorch + FBGEMM TBE (eager, CUDA graph, torch.compile), PyTorch in a CUDA graph ...")
        rows += torch_rows(b)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows, ours, export


def _print_speedups(summary: dict) -> None:
    """Our default and fastest rows against the best PyTorch row."""
    if summary["ours"] and summary["best_pytorch"]:
        for key in ("ours", "ours_fastest"):
            o = summary[key]
            if key == "ours_fastest" and o["name"] == summary["ours"]["name"]:
                continue
            say(f"{o['name']}: {o['speedup_vs_best_pytorch']:.2f}x the best PyTorch row "
                f"({summary['best_pytorch']}, {summary['best_pytorch_ms']:.3f} ms)")
        w = summary.get("ours_fastest_wall")
        if w:
            say(f"synchronised wall-clock: {w['name']} {w['wall_ms']:.3f} ms, {w['speedup_vs_best_pytorch_wall']:.2f}x "
                f"the best PyTorch row ({summary['best_pytorch_wall_ms']:.3f} ms)")


def _result(b: Bench, rows: list[Row], summary: dict, memory: dict, export: dict) -> dict:
    """The JSON document: environment, configuration, summary, memory, export and rows."""
    args, cfg = b.args, b.cfg
    return {"benchmark": "e2e", "environment": environment(),
            "config": {"name": cfg.name, "table_rows": list(cfg.table_rows), "dim": cfg.dim,
                       "num_dense": cfg.num_dense, "bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp),
                       "batch": b.batch, "pooling": b.pooling, "indices": args.indices, "ids": args.ids,
                       "dtype": args.dtype,
                       "device": b.device, "threads": b.threads, "runs": args.runs, "warmup": args.warmup,
                       "graph_runs": args.graph_runs or max(args.runs, 50), "stock_budget_s": args.stock_budget,
                       "compile_budget_s": args.compile_budget, "hot_rows": export["hot_rows"]["chosen"] == "on",
                       "pinned_rows": export["export"]["pinned_rows"]},
            "summary": summary, "memory": memory, "hot_rows": export["hot_rows"], "export": export["export"],
            "rows": [asdict(r) for r in rows]}


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; prints progress, a table and the memory summary, writes JSON and PNG.
    Exit 1 when a row's output disagrees with PyTorch."""
    variants = _parse_list(args.variants, C.VARIANTS, "variant")
    checks = _parse_list(args.checks, C.CHECKS, "check mode")
    b = _setup(args)
    json_path = args.json or os.path.join("results", f"e2e_{b.cfg.name}_{args.dtype}.json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"
    rows, ours, export = _run_rows(b, variants, checks, "CUDA" if b.cuda else "CPU")
    summary = summarize(rows, rows[0])
    memory = memory_summary(b, ours, export["export"])
    say("")
    print_table(rows)
    say("")
    _print_speedups(summary)
    print_memory(memory)
    result = _result(b, rows, summary, memory, export)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, plot_path, f"DLRM {b.cfg.name}, batch {b.batch}, {args.indices}, tables {args.dtype}, {b.device} "
                          f"({result['environment'].get('gpu', platform.processor() or 'CPU')})")
    say(f"\nwrote {json_path} and {plot_path}")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
