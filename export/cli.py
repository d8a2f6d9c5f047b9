"""``dlrm-deploy export``: build a DLRM config and export it to ONNX with the custom op."""

from __future__ import annotations

import argparse
import os
import time

from dlrm_deploy import contract as C


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dlrm-deploy export``."""
    parser.add_argument("--config", default="small", help="DLRM config: small or paper (default small)")
    parser.add_argument("--out", required=True, help="output .onnx path (big tables go to <out>.data)")
    parser.add_argument("--dtype", default="fp32", choices=C.DTYPES, help="table storage (int8, int4 = row-wise quantized)")
    parser.add_argument("--variant", default="auto", choices=C.VARIANTS, help="kernel variant attribute")
    parser.add_argument("--prefetch-distance", type=int, default=0, help="lookups in flight (0 = default)")
    parser.add_argument("--check", default="checked", choices=C.CHECKS, help="bounds checking attribute")
    parser.add_argument("--hot-rows-from", metavar="FILE",
                        help="trace of row ids (one per line) to profile hot rows: reorder tables, pin rows")
    parser.add_argument("--pinned-rows", type=int, default=None,
                        help="hot rows per table (default: cover --hot-coverage of the sampled lookups)")
    parser.add_argument("--hot-coverage", type=float, default=0.9, help="share of lookups to pin (default 0.9)")
    parser.add_argument("--l2-budget-mb", type=float, default=30.0, help="L2 bytes for pinned rows, MiB (default 30)")
    parser.add_argument("--batch", type=int, default=None, help="batch of the example inputs (export stays dynamic)")
    parser.add_argument("--dim", type=int, default=None, help="override the embedding dim")
    parser.add_argument("--rows", type=int, default=None, help="override rows per table")
    parser.add_argument("--tables", type=int, default=None, help="override the number of tables")
    parser.add_argument("--no-table-batching", action="store_true", help="one op node per table")
    parser.add_argument("--overlap", action="store_true",
                        help="ONNX Runtime CUDA: run the lookups beside the dense layers (a Join node; not TensorRT)")
    parser.add_argument("--no-fuse-interaction", action="store_true",
                        help="keep DLRM's dot interaction as standard ops (default: one DotInteraction node)")
    parser.add_argument("--no-fuse-mlp", action="store_true",
                        help="keep the MLPs' Linear layers as Gemm nodes (default: one Mlp node per chain)")
    parser.add_argument("--no-split-scales", action="store_true",
                        help="int8: keep each row's codes, scale and bias together (default from dim 64 on: the "
                             "codes of every row first, then the scales and biases; faster on the GPU there, "
                             "slower on the CPU: use this flag for CPU inference)")
    parser.add_argument("--external-data", action="store_true", help="weights in <out>.data even when small")
    parser.add_argument("--no-validate", action="store_true", help="skip onnx.checker full_check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and example inputs")


def main(args: argparse.Namespace) -> int:
    """Runs the export; prints progress and a summary. Returns the exit code (user errors raise:
    the ``dlrm-deploy`` entry point reports them in one line with exit code 2)."""
    import torch

    from .dlrm import DLRM, get_config, make_inputs
    from .onnx_export import check_output_path, export_onnx

    check_output_path(args.out)
    if args.hot_rows_from and not os.path.isfile(args.hot_rows_from):
        raise FileNotFoundError(f"--hot-rows-from file not found: {args.hot_rows_from}")
    for name in ("batch", "dim", "rows", "tables"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    overrides = {}
    if args.dim:
        overrides["dim"] = args.dim
    if args.rows:
        overrides["rows"] = args.rows
    if args.tables:
        overrides["num_tables"] = args.tables
    cfg = get_config(args.config, **overrides)
    print(f"config {cfg.name}: {cfg.num_tables} tables x {max(cfg.table_rows)} rows x dim {cfg.dim}, "
          f"{cfg.num_dense} dense -> bottom {list(cfg.bottom_mlp)}, top {list(cfg.top_mlp)}; "
          f"tables {cfg.table_bytes() / 2**20:.1f} MiB fp32", flush=True)
    t = time.perf_counter()
    model = DLRM(cfg, seed=args.seed).eval()
    print(f"built the model in {time.perf_counter() - t:.1f}s", flush=True)
    batch = args.batch or min(cfg.batch, 64)
    example = make_inputs(cfg, batch, seed=args.seed)
    with torch.no_grad():
        model(*example)
    info = export_onnx(model, example, args.out, dtype=args.dtype, variant=args.variant,
                       prefetch_distance=args.prefetch_distance, check=args.check,
                       table_batching=not args.no_table_batching, overlap=args.overlap,
                       fuse_interaction=not args.no_fuse_interaction,
                       fuse_mlp=not args.no_fuse_mlp, split_scales=not args.no_split_scales,
                       hot_rows_from=args.hot_rows_from,
                       pinned_rows=args.pinned_rows, hot_coverage_target=args.hot_coverage,
                       l2_budget_bytes=int(args.l2_budget_mb * 2**20), external_data=args.external_data or None,
                       validate=not args.no_validate, output_names=["probability"],
                       progress=lambda m: print(m, flush=True))
    print("inputs: dense [B, %d] float32; indices_t, offsets_t int64 per table (t = 0..%d)"
          % (cfg.num_dense, cfg.num_tables - 1))
    return 0 if info.op_nodes else 1
