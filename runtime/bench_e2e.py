"""``dlrm-deploy bench e2e``: the whole DLRM, end to end, in every way we can run it.

Rows (same process, same inputs, same device):
  - PyTorch eager with ``nn.EmbeddingBag`` (the reference every output is checked against);
  - the same model exported by torch.onnx without our op (the stock exporter) in ONNX Runtime;
  - our ONNX (``dlrm_deploy::EmbeddingBag``) in ONNX Runtime, once per kernel variant;
  - PyTorch eager with FBGEMM's table-batched embedding inference
    (``IntNBitTableBatchedEmbeddingBagsCodegen``, bounds checks off) where fbgemm_gpu imports.
ONNX Runtime uses its CUDA provider on a GPU machine and the CPU provider elsewhere (a smoke test:
our op then runs the core's CPU reference). Every row's output is compared with PyTorch on fresh
inputs before it is timed; times are the median (and min/max) of --runs runs after warm-up, with
CUDA events for PyTorch and synchronised wall-clock for ONNX Runtime (it syncs at the end of a run).
Results go to a JSON file and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from dlrm_deploy import contract as C

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8": 2e-2}  # max abs error of the probability


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
    note: str = ""
    skipped: str = ""
    extra: dict = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, flush=True)


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
                 check: str | None = None) -> None:
    """Copies the ONNX file src to dst with every op node's variant (and prefetch distance, bounds
    check mode) set; external data stays where it is (dst must be in src's folder)."""
    import onnx

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
    onnx.save(m, dst)


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
            import subprocess

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


def print_table(rows: list[Row]) -> None:
    """Results as an aligned text table."""
    head = f"{'row':<44} {'median ms':>10} {'min':>8} {'max':>8} {'vs eager':>9} {'max err':>9}  check"
    _say(head)
    _say("-" * len(head))
    for r in rows:
        if r.skipped:
            _say(f"{r.name:<44} skipped: {r.skipped}")
            continue
        f = (lambda v, w=8, p=3: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}")
        sp = f"{r.speedup_vs_eager:>8.2f}x" if r.speedup_vs_eager else f"{'-':>9}"
        err = f"{r.max_abs_err:>9.1e}" if r.max_abs_err is not None else f"{'-':>9}"
        _say(f"{r.name:<44} {f(r.median_ms, 10)} {f(r.min_ms)} {f(r.max_ms)} {sp} {err}  "
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dlrm-deploy bench e2e`` (also usable alone: ``python -m dlrm_deploy.runtime.bench_e2e``)."""
    parser.add_argument("--config", default="paper", help="DLRM config: paper or small (default paper)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's, paper 2048)")
    parser.add_argument("--pooling", default=None, help="lookups per bag (int) or var:L (default: the config's)")
    parser.add_argument("--dtype", default="fp32", choices=C.DTYPES, help="our op's table storage (default fp32)")
    parser.add_argument("--indices", default="uniform", help="uniform | zipf:ALPHA | trace:FILE")
    parser.add_argument("--variants", default="auto,baseline,occupancy,prefetch,l2pin,combined",
                        help="comma-separated kernel variants of our op")
    parser.add_argument("--hot-rows", choices=("auto", "on", "off"), default="auto",
                        help="profile hot rows (reorder + pin) from a fresh sample of --indices; auto: on "
                             "unless --indices uniform")
    parser.add_argument("--checks", default="checked",
                        help="comma list of the op's bounds-check modes to time (checked|deferred|unchecked)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per row (>= 30 for reported numbers)")
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
    parser.add_argument("--no-fbgemm", action="store_true", help="skip the FBGEMM TBE row")
    parser.add_argument("--workdir", default=None, help="folder for the ONNX files (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write results here (default results/e2e_<config>_<dtype>.json)")
    parser.add_argument("--plot", default=None, help="write the PNG plot here (default: the JSON path with .png)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; prints progress and a table, writes JSON and PNG. Exit 1 when a row's
    output disagrees with PyTorch."""
    import torch

    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs
    from dlrm_deploy.runtime import ort as ort_rt

    cfg = get_config(args.config)
    batch = args.batch or cfg.batch
    pooling = cfg.pooling if args.pooling is None else (int(args.pooling) if str(args.pooling).isdigit()
                                                         else args.pooling)
    ort_cuda = ort_rt.cuda_available()
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() and ort_cuda else "cpu"
    else:
        device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    tdev = torch.device(device)
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else None)
    ort_options = {}
    if threads:
        torch.set_num_threads(threads)
        ort_options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    cuda = device == "cuda"
    if cuda:  # like for like: PyTorch's fp32 matmuls do not use TF32 by default, ORT's CUDA provider does
        ort_options["provider_options"] = {"use_tf32": "0"}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in C.VARIANTS:
            raise SystemExit(f"unknown variant '{v}'; known: {C.VARIANTS}")
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    for c in checks:
        if c not in C.CHECKS:
            raise SystemExit(f"unknown check mode '{c}'; known: {C.CHECKS}")
    hot = args.hot_rows == "on" or (args.hot_rows == "auto" and args.indices != "uniform")
    json_path = args.json or os.path.join("results", f"e2e_{cfg.name}_{args.dtype}.json")
    plot_path = args.plot or os.path.splitext(json_path)[0] + ".png"

    _say(f"bench e2e: config {cfg.name} ({cfg.num_tables} tables x {max(cfg.table_rows)} rows x {cfg.dim}), "
         f"batch {batch}, pooling {pooling}, indices {args.indices}, tables {args.dtype}, device {device}, "
         f"runs {args.runs} (+{args.warmup} warm-up)")
    t0 = time.perf_counter()
    model = DLRM(cfg, seed=args.seed).eval()
    _say(f"  built the model ({cfg.table_bytes() / 2**30:.2f} GiB of fp32 tables) in {time.perf_counter() - t0:.1f}s")
    inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 100)
    check_inputs = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 200)
    rows: list[Row] = []
    failed = False

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    workdir = args.workdir or tmp.name
    os.makedirs(workdir, exist_ok=True)
    try:
        # 1. PyTorch eager, the reference.
        _say("[1] PyTorch eager (nn.EmbeddingBag) ...")
        gpu_model = model.to(tdev)
        on_dev = lambda x: (x[0].to(tdev), [i.to(tdev) for i in x[1]], [o.to(tdev) for o in x[2]])  # noqa: E731
        dev_inputs, dev_check = on_dev(inputs), on_dev(check_inputs)
        with torch.no_grad():
            ref_check = gpu_model(*dev_check).float().cpu().numpy()
            t = time_torch(lambda: gpu_model(*dev_inputs), args.runs, args.warmup, cuda)
        eager = Row("PyTorch eager (nn.EmbeddingBag fp32)", "torch", "fp32", ok=True, **t)
        rows.append(eager)
        _say(f"    median {eager.median_ms:.3f} ms")
        gpu_model.cpu()
        model = gpu_model
        if cuda:
            torch.cuda.empty_cache()

        def run_ort(name, backend, dtype, path, variant="", runs=args.runs):
            nonlocal failed
            row = Row(name, backend, dtype, variant)
            try:
                sess = ort_rt.ort_session(path, device=device, **ort_options)
                got = sess.run(onnx_feeds(sess.input_names, *check_inputs))[0]
                row.max_abs_err, row.max_rel_err = compare(got, ref_check)
                row.ok = row.max_abs_err <= TOLERANCE[dtype]
                if not row.ok:
                    failed = True
                    row.note = "output differs from PyTorch; not timed"
                else:
                    t = time_ort(sess, onnx_feeds(sess.input_names, *inputs), runs, min(args.warmup, runs))
                    for k, v in t.items():
                        setattr(row, k, v)
                del sess
            except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
                row.skipped = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            _say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                                        f"max err {row.max_abs_err:.2e}, " +
                                        (f"median {row.median_ms:.3f} ms" if row.median_ms is not None else "FAILED")))

        prov = "CUDA" if cuda else "CPU"
        # 2. Stock exporter.
        if not args.no_stock:
            _say(f"[2] stock torch.onnx export (no custom op) in ORT {prov} ...")
            stock = os.path.join(workdir, "stock.onnx")
            try:
                t = time.perf_counter()
                export_stock(model, make_inputs(cfg, 8, pooling=4, seed=1), stock)
                _say(f"    exported in {time.perf_counter() - t:.1f}s")
                run_ort(f"ORT {prov}, stock export (fp32)", "ort-stock", "fp32", stock,
                        runs=args.stock_runs or args.runs)
            except Exception as e:  # noqa: BLE001
                rows.append(Row(f"ORT {prov}, stock export (fp32)", "ort-stock", "fp32", skipped=str(e)[:300]))

        # 3. Our op, each variant.
        _say(f"[3] our op in ORT {prov}: export ({args.dtype}{', hot rows' if hot else ''}) ...")
        ours = os.path.join(workdir, "dlrm_deploy.onnx")
        sample = None
        if hot:
            sample = make_inputs(cfg, batch, pooling=pooling, source=args.indices, seed=args.seed + 300)
        t = time.perf_counter()
        info = export_onnx(model, make_inputs(cfg, 8, pooling=4, seed=1), ours, dtype=args.dtype,
                           hot_rows_from=sample, validate=cfg.table_bytes() < (1 << 30),
                           progress=lambda m: _say("    " + m.replace("\n", "\n    ")))
        _say(f"    exported in {time.perf_counter() - t:.1f}s; pinned rows per table {info.pinned_rows}")
        for chk in checks:
            for v in variants:
                path = os.path.join(workdir, f"dlrm_deploy_{v}_{chk}.onnx")
                with_variant(ours, path, v, check=chk)
                label = v if chk == "checked" else f"{v}, check={chk}"
                run_ort(f"ORT {prov} + dlrm_deploy op ({args.dtype}, {label})", "ort-dlrm_deploy", args.dtype, path,
                        v)

        # 4. FBGEMM TBE.
        if not args.no_fbgemm:
            _say("[4] PyTorch eager + FBGEMM TBE embeddings ...")
            tbe_dtype = args.dtype if args.dtype != "bf16" else "fp16"
            row = Row(f"PyTorch eager + FBGEMM TBE ({tbe_dtype})", "torch+fbgemm", tbe_dtype)
            try:
                if not cuda:
                    raise RuntimeError("FBGEMM's inference TBE row runs on CUDA only")
                tbe_model = _TBEModel(model.to(tdev), tbe_dtype, tdev)
                cd, ci, co = dev_check
                with torch.no_grad():
                    got = tbe_model(cd, *tbe_inputs(ci, co, tdev)).float().cpu().numpy()
                row.max_abs_err, row.max_rel_err = compare(got, ref_check)
                row.ok = row.max_abs_err <= TOLERANCE[tbe_dtype]
                if row.ok:
                    d, i, o = dev_inputs
                    ids, offs = tbe_inputs(i, o, tdev)
                    with torch.no_grad():
                        t = time_torch(lambda: tbe_model(d, ids, offs), args.runs, args.warmup, cuda)
                    for k, v in t.items():
                        setattr(row, k, v)
                else:
                    failed = True
                    row.note = "output differs from PyTorch; not timed"
                del tbe_model
                model.cpu()
            except Exception as e:  # noqa: BLE001 - e.g. fbgemm_gpu not installed
                row.skipped = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            _say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                                        f"max err {row.max_abs_err:.2e}, median {row.median_ms}"))
    finally:
        if tmp is not None:
            tmp.cleanup()

    for r in rows:
        if r.median_ms and eager.median_ms:
            r.speedup_vs_eager = eager.median_ms / r.median_ms
    _say("")
    print_table(rows)
    result = {"benchmark": "e2e", "environment": environment(),
              "config": {"name": cfg.name, "table_rows": list(cfg.table_rows), "dim": cfg.dim,
                         "num_dense": cfg.num_dense, "bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp),
                         "batch": batch, "pooling": pooling, "indices": args.indices, "dtype": args.dtype,
                         "device": device, "threads": threads, "runs": args.runs, "warmup": args.warmup, "hot_rows": hot,
                         "pinned_rows": info.pinned_rows},
              "rows": [asdict(r) for r in rows]}
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, plot_path, f"DLRM {cfg.name}, batch {batch}, {args.indices}, tables {args.dtype}, {device} "
                          f"({result['environment'].get('gpu', platform.processor() or 'CPU')})")
    _say(f"\nwrote {json_path} and {plot_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
