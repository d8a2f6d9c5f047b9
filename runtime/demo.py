"""``dlrm-deploy demo``: the whole path on the `small` DLRM in a few seconds.

Builds the model, exports it to ONNX with the custom op (into a temporary folder), runs it in ONNX
Runtime (CUDA when onnxruntime has it, else CPU), compares with PyTorch (max abs and relative
error; exit code 1 over the tolerance) and prints a timing table: PyTorch eager with
nn.EmbeddingBag, PyTorch eager with our torch op, and ONNX Runtime with our op (ms, median of
--runs runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from dlrm_deploy import contract as C

from .accuracy import TOLERANCE, compare, onnx_feeds
from .timing import time_ort, time_torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dlrm-deploy demo``."""
    parser.add_argument("--batch", type=int, default=128, help="batch size (samples, default 128)")
    parser.add_argument("--dtype", default="fp32", choices=C.DTYPES, help="table storage in the ONNX file")
    parser.add_argument("--indices", default="zipf:1.05", help="uniform | zipf:ALPHA | trace:FILE (default zipf:1.05)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: CUDA when onnxruntime has its CUDA provider")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per row (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max abs error of the output probability (default by dtype: fp32 1e-4)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on the CPU)")
    parser.add_argument("--keep", metavar="DIR", default=None, help="write the ONNX file into DIR and keep it")
    parser.add_argument("--seed", type=int, default=0)


def _device_options(args: argparse.Namespace, cuda_available) -> tuple[str, int | None, dict]:
    """(ONNX Runtime device, CPU threads or None, ort_session options) from the options, with
    cuda_available() asked for --device auto; sets torch's threads too."""
    import torch

    device = ("cuda" if cuda_available() else "cpu") if args.device == "auto" else args.device
    threads = args.threads if args.threads is not None else (1 if device == "cpu" else None)
    ort_options = {}
    if threads:
        torch.set_num_threads(threads)
        ort_options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return device, threads, ort_options


def _timing_rows(args: argparse.Namespace, model, sess, feeds: dict, inputs, want, tol: float, device: str,
                 tdev, torch_cuda: bool) -> list[tuple[str, dict]]:
    """(row name, timer result or {"skipped": why}) of PyTorch eager with nn.EmbeddingBag, PyTorch
    eager with our torch op (checked first) and ONNX Runtime with our op."""
    import torch

    from dlrm_deploy.export import swap_embedding_bags

    rows = []
    on_dev = (inputs[0].to(tdev), [i.to(tdev) for i in inputs[1]], [o.to(tdev) for o in inputs[2]])
    eager = model.to(tdev)
    with torch.no_grad():
        rows.append((f"PyTorch eager, nn.EmbeddingBag ({tdev.type})",
                     time_torch(lambda: eager(*on_dev), args.runs, args.warmup, torch_cuda)))
    try:
        ours = swap_embedding_bags(model.cpu(), dtype=args.dtype).to(tdev).eval()
        with torch.no_grad():
            err, _ = compare(ours(*on_dev).float().cpu().numpy(), want)
            if err > tol:
                raise RuntimeError(f"torch op output differs from nn.EmbeddingBag by {err:.2e}")
            rows.append((f"PyTorch eager, dlrm_deploy torch op ({tdev.type})",
                         time_torch(lambda: ours(*on_dev), args.runs, args.warmup, torch_cuda)))
    except Exception as e:  # noqa: BLE001 - e.g. the core library has no kernel for this device
        rows.append((f"PyTorch eager, dlrm_deploy torch op ({tdev.type})", {"skipped": str(e)[:120]}))
    rows.append((f"ONNX Runtime + dlrm_deploy op ({device})", time_ort(sess, feeds, args.runs, args.warmup)))
    return rows


def _print_timings(rows: list[tuple[str, dict]], args: argparse.Namespace, threads: int | None) -> None:
    """The timing table, speed-ups against the first row."""
    base = rows[0][1]["median_ms"]
    print(f"\n{'':<48} {'median ms':>10} {'min':>8} {'max':>8} {'speedup':>8}")
    for name, r in rows:
        if "skipped" in r:
            print(f"{name:<48} skipped: {r['skipped']}")
            continue
        print(f"{name:<48} {r['median_ms']:>10.3f} {r['min_ms']:>8.3f} {r['max_ms']:>8.3f} "
              f"{base / r['median_ms']:>7.2f}x")
    print(f"(median of {args.runs} runs after {args.warmup} warm-up runs"
          + (f", {threads} CPU thread(s)" if threads else "") + ")")


def main(args: argparse.Namespace) -> int:
    """Runs the demo; returns 0 when ONNX Runtime agrees with PyTorch, 1 otherwise."""
    import torch

    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs
    from dlrm_deploy.runtime import ort as ort_rt

    cfg = get_config("small")
    device, threads, ort_options = _device_options(args, ort_rt.cuda_available)
    torch_cuda = device == "cuda" and torch.cuda.is_available()
    tdev = torch.device("cuda" if torch_cuda else "cpu")
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]

    print(f"dlrm-deploy demo: DLRM '{cfg.name}' ({cfg.num_tables} tables, rows {list(cfg.table_rows)}, dim {cfg.dim}), "
          f"batch {args.batch}, {args.indices} indices, tables {args.dtype}; ONNX Runtime on {device}", flush=True)
    model = DLRM(cfg, seed=args.seed).eval()
    example = make_inputs(cfg, 8, seed=args.seed)
    inputs = make_inputs(cfg, args.batch, pooling=f"var:{cfg.pooling}", source=args.indices, seed=args.seed + 1)

    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    folder = args.keep or tmp.name
    try:
        path = os.path.join(folder, f"dlrm_small_{args.dtype}.onnx")
        hot_sample = make_inputs(cfg, 256, source=args.indices, seed=args.seed + 2) \
            if args.indices != "uniform" else None
        info = export_onnx(model, example, path, dtype=args.dtype, hot_rows_from=hot_sample,
                           output_names=["probability"], progress=lambda m: print("  " + m.replace("\n", "\n  "),
                                                                                   flush=True))
        print(f"  {info.op_nodes} custom-op node(s) for {len(info.tables)} tables; the batch was 8 at export and "
              f"is {args.batch} now, with bags of 0..{2 * cfg.pooling} lookups")

        sess = ort_rt.ort_session(path, device=device, **ort_options)
        print(f"  ONNX Runtime providers: {sess.providers}")
        feeds = onnx_feeds(sess.input_names, *inputs)
        got = sess.run(feeds)[0]
        with torch.no_grad():
            want = model(*inputs).numpy()
        abs_err, rel_err = compare(got, want)
        ok = abs_err <= tol
        print(f"\ncheck against PyTorch: max abs error {abs_err:.3e}, max relative error {rel_err:.3e} "
              f"(tolerance {tol:.0e}) -> {'OK' if ok else 'FAILED'}")
        _print_timings(_timing_rows(args, model, sess, feeds, inputs, want, tol, device, tdev, torch_cuda), args,
                       threads)
        if args.keep:
            print(f"\nkept {path}")
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
