"""`dlrm-deploy bench kernels`: the embedding stage benchmark of docs/benchmarks.md.

All tables of one batch per timed region; every kernel's output is checked against a reference
(torch.nn.functional.embedding_bag over the float64-exact dequantized tables, on the GPU) before it
is timed; CUDA events, warm-up, median of --runs with min and max; steady state (L2 not flushed)
unless --cold-l2. Baselines in the same process on the same inputs: torch.nn.functional.embedding_bag
(one call per table, the paper's baseline kernel) and FBGEMM's IntNBitTableBatchedEmbeddingBagsCodegen
when importable. Writes a table, JSON (--json) and a PNG plot (--plot; bench_kernels_report.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from dlrm_deploy import contract

from .bench_env import driver_version
from .bench_kernels_report import add_ratios, plot, print_table
from .fbgemm_tbe import DTYPES as TBE_DTYPES
from .fbgemm_tbe import (import_tbe, int4_nibble_positions, make_tbe, pack_int4_codes, unpack_int4_codes,
                         write_int8_rows, write_rows)
from .timing import time_cuda


def make_indices(source: str, tables: int, rows: int, count: int, seed: int) -> np.ndarray:
    """[tables, count] int64 ids from 'uniform', 'zipf:<alpha>' or 'trace:<file>' (the model inputs'
    index sources), table after table. A trace is read circularly from a position that depends on
    seed (so that the hot-row sample differs from the timed ids); ids >= rows are skipped (as the
    paper's loader does)."""
    from dlrm_deploy.export.index_sources import IndexSource

    ids = IndexSource(source, np.random.default_rng(seed), trace_start=seed * 7919)
    return np.stack([ids.take(count, rows) for _ in range(tables)]).astype(np.int64)


def bag_lengths(pooling: str | int, batch: int, seed: int) -> np.ndarray:
    """[batch] lookups per bag, the same for every table: pooling L (an int or its text) for all,
    or 'var:L' for lengths uniform in [0, 2L] (empty bags included), as the model inputs' pooling."""
    text = str(pooling)
    if text.startswith("var:"):
        try:
            mean = int(text[4:])
        except ValueError:
            mean = -1
        if mean < 1:
            raise SystemExit(f"--pooling: 'var:L' needs an integer L >= 1, got {text!r}")
        return np.random.default_rng(seed + 104729).integers(0, 2 * mean + 1, size=batch).astype(np.int64)
    try:
        fixed = int(text)
    except ValueError:
        fixed = -1
    if fixed < 1:
        raise SystemExit(f"--pooling: an integer >= 1 or 'var:L', got {text!r}")
    return np.full(batch, fixed, dtype=np.int64)


def parse_dims(text) -> list[int]:
    """--dim: one width or a comma list of widths (each >= 1); SystemExit with a one-line message."""
    try:
        dims = [int(x) for x in str(text).split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise SystemExit(f"--dim: expected a width or a comma list of widths, got {text!r}")
    return dims


def packed_offsets(lengths: np.ndarray, tables: int) -> np.ndarray:
    """Offsets of the packed form with include_last_offset: tables x len(lengths) bag starts (table
    t's ids after the first t tables' ids), then the total."""
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # one table's B + 1
    n = int(starts[-1])
    return np.concatenate([starts[:-1] + t * n for t in range(tables)] + [np.array([tables * n])]).astype(np.int64)


# ---------------------------------------------------------------- kernels under test
class Workload:
    """Tables (as logical fp32 values on the GPU), indices and offsets of one benchmark shape."""

    def __init__(self, args, ids: np.ndarray, lengths: np.ndarray, dtype: str, dim: int, seed: int | None = None):
        import torch

        from dlrm_deploy.layout import quantize_int4_rowwise, quantize_int8_rowwise

        self.T, self.R, self.D, self.B = ids.shape[0], args.rows, dim, args.batch
        self.dtype = dtype
        self.index_type = args.index_type  # ours; FBGEMM's rows always get int32
        g = torch.Generator(device="cuda").manual_seed(args.seed if seed is None else seed)
        logical = torch.randn(self.T * self.R, self.D, generator=g, device="cuda")
        if dtype == "int8":
            self.stored = torch.empty(self.T * self.R, contract.row_bytes("int8", self.D), dtype=torch.uint8,
                                      device="cuda")
            for t in range(self.T):  # per table keeps the temporaries small
                sl = slice(t * self.R, (t + 1) * self.R)
                self.stored[sl] = quantize_int8_rowwise(logical[sl])
            dq = self.stored[:, :self.D].float()
            sb = self.stored[:, self.D:self.D + 8].contiguous().view(torch.float32)
            logical = torch.addcmul(sb[:, 1:2], dq, sb[:, 0:1])  # scale * code + bias in fp32, as the kernels do
            del dq, sb
        elif dtype == "int4":
            self.stored = torch.empty(self.T * self.R, contract.row_bytes("int4", self.D), dtype=torch.uint8,
                                      device="cuda")
            for t in range(self.T):
                sl = slice(t * self.R, (t + 1) * self.R)
                self.stored[sl] = quantize_int4_rowwise(logical[sl])
            dq = unpack_int4_codes(self.stored, self.D).float()
            h = self.D // 2
            sb = self.stored[:, h:h + 8].contiguous().view(torch.float32)
            logical = torch.addcmul(sb[:, 1:2], dq, sb[:, 0:1])
            del dq, sb
        else:
            self.stored = logical.to(getattr(torch, contract.DTYPE_INFO[dtype].torch))
            logical = self.stored.float()
        self.logical = logical
        self.ids = torch.from_numpy(ids).cuda()  # [T, B*L] local ids
        self.indices = self.ids.reshape(-1).contiguous()
        self.offsets = torch.from_numpy(packed_offsets(lengths, self.T)).cuda()
        self.bag_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)).cuda()
        self.rows_gathered = self.T * int(lengths.sum())
        self.bytes_gathered = self.rows_gathered * self.stored.shape[1] * self.stored.element_size()

    def table_views(self):
        """Per table: (rows, dim, stored rows, its ids)."""
        return [(self.R, self.D, self.stored[t * self.R:(t + 1) * self.R], self.ids[t]) for t in range(self.T)]

    def reference(self):
        """fp32 reference [B, T*D] and the sum of |terms| per element (for the tolerance)."""
        import torch
        import torch.nn.functional as F

        outs, mags = [], []
        off = self.bag_starts
        for t in range(self.T):
            sl = slice(t * self.R, (t + 1) * self.R)
            w = self.logical[sl].double()
            outs.append(F.embedding_bag(self.ids[t], w, off, mode="sum"))
            if self.dtype == "int8":  # our kernels add scale * code and the bias as separate terms
                sb = self.stored[sl, self.D:self.D + 8].contiguous().view(torch.float32).double()
                magnitude = (self.stored[sl, :self.D].double() * sb[:, 0:1]).abs_().add_(sb[:, 1:2].abs())
            else:
                magnitude = w.abs()
            mags.append(F.embedding_bag(self.ids[t], magnitude, off, mode="sum"))
        return torch.cat(outs, 1), torch.cat(mags, 1)


class MixedWorkload:
    """Tables of several dims in one batch (--dim 16,32,64,128): the tables split into consecutive
    groups of one dim each (as evenly as the count allows), one Workload per group. Our op has one
    dim per node, so a model with several dims exports one node per dim: ours runs the groups' launches
    back to back; FBGEMM takes every table in one launch. Outputs: the groups' [B, T_g * D_g] side by
    side."""

    def __init__(self, args, ids: np.ndarray, lengths: np.ndarray, dtype: str, dims: list[int]):
        import torch

        self.T, self.B, self.dtype, self.D, self.dims = ids.shape[0], args.batch, dtype, None, dims
        counts = [self.T // len(dims) + (g < self.T % len(dims)) for g in range(len(dims))]
        if min(counts) == 0:
            raise SystemExit(f"--dim: {len(dims)} dims need at least as many --tables (got {self.T})")
        bounds = np.cumsum([0] + counts)
        self.groups = [Workload(args, ids[bounds[g]:bounds[g + 1]], lengths, dtype, d, seed=args.seed + g)
                       for g, d in enumerate(dims)]
        self.indices = torch.cat([w.indices for w in self.groups])
        self.offsets = torch.from_numpy(packed_offsets(lengths, self.T)).cuda()
        self.bag_starts = self.groups[0].bag_starts
        self.bytes_gathered = sum(w.bytes_gathered for w in self.groups)

    def table_views(self):
        return [v for w in self.groups for v in w.table_views()]

    def reference(self):
        import torch

        refs = [w.reference() for w in self.groups]
        return torch.cat([r for r, _ in refs], 1), torch.cat([m for _, m in refs], 1)


def ours_mixed(wl: MixedWorkload, variant: str, split_scales: bool, prefetch_distance: int = 0):
    """Our op once per dim group, back to back, as an exported model with several dims runs it; int8
    groups stored as export stores them (split_scales from SPLIT_SCALES_MIN_DIM on)."""
    from dlrm_deploy.export.batching import SPLIT_SCALES_MIN_DIM

    made = [ours(w, variant, prefetch_distance=prefetch_distance,
                 split=split_scales and w.dtype == "int8" and w.D % 8 == 0 and w.D >= SPLIT_SCALES_MIN_DIM)
            for w in wl.groups]
    runs = [r for r, _ in made]

    def run():
        return [r() for r in runs]

    run.inputs = [r.inputs for r in runs]
    return run, " + ".join(f"D {w.D}: {d}" for w, (_, d) in zip(wl.groups, made))


def check(out, ref, mag, rel=1e-5) -> tuple[bool, float]:
    """Whether |out - ref| <= rel * sum|terms| + (output rounding)|ref| everywhere, rel covering fp32
    sums in any order; returns (ok, worst error / tolerance)."""
    import torch

    err = (out.double() - ref).abs()
    out_eps = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[out.dtype]
    tol = rel * mag + out_eps * ref.abs() + 1e-30
    ratio = float((err / tol).max())
    return ratio <= 1.0, ratio


def ours(wl: Workload, variant: str, pinned_rows: int = 0, hot_first: int = 0, prefetch_distance: int = 0,
         reorder=None, split: bool = False):
    """A callable running our op over all tables in one launch, and its description. split: int8
    tables stored split_scales=1."""
    import torch

    from dlrm_deploy.runtime import _core

    attrs = dict(table_rows=[wl.R] * wl.T, dim=wl.D, dtype=wl.dtype, variant=variant, check="deferred",
                 include_last_offset=1, split_scales=int(split),
                 pinned_rows=pinned_rows, hot_first=hot_first, prefetch_distance=prefetch_distance)
    weights, indices = wl.stored, wl.indices
    if reorder is not None:  # (packed weights in hot-first order, remapped indices)
        weights, indices = reorder
    if split:
        from dlrm_deploy.layout import split_scales

        weights = split_scales(weights, wl.D)
    index_type = wl.index_type
    indices, offsets = indices.to(getattr(torch, index_type)), wl.offsets.to(getattr(torch, index_type))
    cfg = _core.make_config(attrs, index_type)
    if pinned_rows and hot_first:
        _core.setup_l2_persistence(cfg)
    out = torch.empty(wl.B, wl.T * wl.D, device="cuda")
    ws = torch.zeros(_core.workspace_size(cfg), dtype=torch.uint8, device="cuda")
    n_idx, n_off = indices.numel(), offsets.numel()
    keep = (weights, indices, offsets)  # copies live as long as run
    ptrs = (weights.data_ptr(), indices.data_ptr(), offsets.data_ptr())

    def run():
        _core.forward_cuda(cfg, *ptrs, None, n_idx, n_off, out.data_ptr(), ws.data_ptr(),
                           torch.cuda.current_stream().cuda_stream)
        return out

    run.inputs = keep
    return run, _core.describe_kernel(cfg) + (" (split_scales=1)" if split else "")


def hot_first_reorder(wl: Workload, sample: np.ndarray, budget_bytes: int):
    """Export-time reordering: rows by frequency in a separate sample, hot prefixes first.

    Returns (pinned_rows, packed weights, remapped indices)."""
    import torch

    from dlrm_deploy.layout import frequency_order

    row_bytes = wl.stored.shape[1] * wl.stored.element_size()
    pinned = max(1, min(wl.R, budget_bytes // (wl.T * row_bytes)))
    hot, cold, remapped = [], [], []
    for t in range(wl.T):
        order, remap = frequency_order(sample[t], wl.R)
        order_t = torch.from_numpy(order).cuda()
        table = wl.stored[t * wl.R:(t + 1) * wl.R][order_t]
        hot.append(table[:pinned])
        cold.append(table[pinned:])
        remapped.append(torch.from_numpy(remap).cuda()[wl.ids[t]])
    packed = torch.cat(hot + cold).contiguous()
    return pinned, packed, torch.cat(remapped).contiguous()


def torch_baseline(wl):
    """torch.nn.functional.embedding_bag, one call per table (PyTorch has no table-batched op)."""
    import torch
    import torch.nn.functional as F

    if wl.dtype in contract.ROWWISE:
        return None, f"torch has no {wl.dtype} row-wise embedding_bag"
    off = wl.bag_starts
    views = wl.table_views()
    cols = np.cumsum([0] + [d for _, d, _, _ in views]).tolist()
    out = torch.empty(wl.B, cols[-1], device="cuda", dtype=views[0][2].dtype)

    def run():
        for t, (_, _, rows, ids) in enumerate(views):
            out[:, cols[t]:cols[t + 1]] = F.embedding_bag(ids, rows, off, mode="sum")
        return out

    return run, "F.embedding_bag x tables"


def fbgemm_baseline(wl):
    """FBGEMM TBE inference kernel on the same tables, all in one launch (its own int8/int4 format:
    fp16 scale/bias; int4 codes in the nibble order its kernel reads, measured by
    int4_nibble_positions)."""
    import torch

    try:
        import_tbe()
    except Exception as e:  # not installed
        return None, f"fbgemm_gpu not importable ({type(e).__name__}: {e})"
    if wl.dtype not in TBE_DTYPES:
        return None, f"FBGEMM has no {wl.dtype} inference tables"
    views = wl.table_views()
    positions = {}
    if wl.dtype == "int4":
        try:
            positions = {d: int4_nibble_positions("cuda", d) for d in sorted({d for _, d, _, _ in views})}
        except Exception as e:  # noqa: BLE001 - reported as a skipped row
            return None, f"FBGEMM int4 layout probe failed ({type(e).__name__}: {e})"
    emb, splits = make_tbe([(r, d) for r, d, _, _ in views], wl.dtype, torch.device("cuda"))
    for (w, ss), (_, d, src, _) in zip(splits, views):
        if wl.dtype == "int8":  # our fp32 scale and bias as FBGEMM's fp16 ones
            write_int8_rows(w, ss, src[:, :d], src[:, d:d + 8].contiguous().view(torch.float32).half())
        elif wl.dtype == "int4":  # our codes in FBGEMM's nibble order, our fp32 scale and bias as fp16
            h = d // 2
            write_int8_rows(w, ss, pack_int4_codes(unpack_int4_codes(src, d), positions[d]),
                            src[:, h:h + 8].contiguous().view(torch.float32).half())
        else:
            write_rows(w, src)
    indices = wl.indices.int()
    offsets = wl.offsets.int()

    def run():
        return emb.forward(indices, offsets)

    ref_override = None
    if wl.dtype in ("int8", "int4"):  # FBGEMM dequantizes with fp16 scale/bias: its own reference
        ref_override = (splits, positions)
    return (run, ref_override), "IntNBitTableBatchedEmbeddingBagsCodegen"


def fbgemm_reference(wl, splits, positions):
    """Reference for FBGEMM's int8 / int4 tables (fp16 scale and bias; int4 codes read in the nibble
    order positions[dim])."""
    import torch
    import torch.nn.functional as F

    outs, mags = [], []
    off = wl.bag_starts
    for (w, ss), (_, d, _, ids) in zip(splits, wl.table_views()):
        sb = ss.contiguous().view(torch.float16).double()
        codes = unpack_int4_codes(w, d, positions[d]) if wl.dtype == "int4" else w[:, :d]
        deq = codes.double() * sb[:, 0:1] + sb[:, 1:2]
        outs.append(F.embedding_bag(ids, deq, off, mode="sum"))
        mags.append(F.embedding_bag(ids, deq.abs(), off, mode="sum"))
    return torch.cat(outs, 1), torch.cat(mags, 1)


# ---------------------------------------------------------------- driver
def _candidates(args, wl: Workload, sample: np.ndarray | None) -> list[tuple[str, object]]:
    """(row name, a callable building (run function, description)) of every kernel to time on wl:
    our variants, with a hot-row sample our pinned variants on hot-first tables, the baselines."""
    candidates = []
    for v in args.variants.split(","):
        if isinstance(wl, MixedWorkload):
            candidates.append((f"ours:{v}", lambda v=v: ours_mixed(wl, v, args.split_scales, args.prefetch_distance)))
            continue
        candidates.append((f"ours:{v}", lambda v=v: ours(wl, v, prefetch_distance=args.prefetch_distance)))
        if wl.dtype == "int8" and wl.D % 8 == 0 and args.split_scales:
            candidates.append((f"ours:{v}+split", lambda v=v: ours(wl, v, prefetch_distance=args.prefetch_distance,
                                                                   split=True)))
    if sample is not None:
        pinned, packed, remapped = hot_first_reorder(wl, sample, args.hot_rows_budget_mb << 20)
        for v in args.pinned_variants.split(","):
            if v:
                candidates.append((f"ours:{v}+hot{pinned}", lambda v=v, p=pinned: ours(
                    wl, v, pinned_rows=p, hot_first=1, prefetch_distance=args.prefetch_distance,
                    reorder=(packed, remapped))))
    if "torch" in args.baselines:
        candidates.append(("torch", lambda: torch_baseline(wl)))
    if "fbgemm" in args.baselines:
        candidates.append(("fbgemm", lambda: fbgemm_baseline(wl)))
    return candidates


def _run_candidate(args, wl, dtype: str, name: str, make, ref, mag) -> dict:
    """One result row: the kernel built, run once and checked against the reference, then timed
    (status ok); skipped, failed or wrong (not timed) otherwise. Prints the outcome."""
    import torch

    row = {"dtype": dtype, "kernel": name}
    try:
        fn, desc = make()
    except Exception as e:  # a variant that cannot be built here is reported, not fatal
        fn, desc = None, f"{type(e).__name__}: {e}"
    row["detail"] = desc
    if fn is None:
        row["status"] = "skipped"
        print(f"  {name:<28} skipped: {desc}", flush=True)
        return row
    r_ref, r_mag = ref, mag
    if isinstance(fn, tuple):
        fn, override = fn
        if override is not None:
            r_ref, r_mag = fbgemm_reference(wl, *override)
    try:
        out = fn()
        if isinstance(out, list):  # one output per dim group (MixedWorkload)
            out = torch.cat(out, 1)
        torch.cuda.synchronize()
    except Exception as e:
        row.update(status="failed", detail=f"{desc}: {type(e).__name__}: {e}")
        print(f"  {name:<28} FAILED: {e}", flush=True)
        return row
    # FBGEMM's int8/int4 kernels dequantize in reduced precision: judged at 1e-3 of sum|terms|.
    rel = 1e-3 if (name == "fbgemm" and dtype in ("int8", "int4")) else 1e-5
    ok, worst = check(out, r_ref, r_mag, rel)
    row["tolerance_rel"] = rel
    row.update(correct=ok, worst_error_over_tolerance=worst)
    if not ok:
        row["status"] = "wrong"
        print(f"  {name:<28} WRONG OUTPUT (error {worst:.2f}x tolerance): not timed", flush=True)
        return row
    t = time_cuda(fn, args.runs, args.warmup, args.cold_l2)
    row.update(t, status="ok", gbps=wl.bytes_gathered / (t["median_ms"] * 1e6))
    print(f"  {name:<28} {t['median_ms']:8.3f} ms  (min {t['min_ms']:.3f}, max {t['max_ms']:.3f})  "
          f"{row['gbps']:7.0f} GB/s  {desc}", flush=True)
    return row


def run_kernels(args) -> dict:
    """Runs the benchmark; returns the result dict (also what --json writes)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench kernels needs a CUDA GPU (none visible)")
    from dlrm_deploy.runtime import _core

    if not _core.cuda_available():
        raise SystemExit("the core library was built without CUDA: rebuild on a machine with nvcc")
    prop = torch.cuda.get_device_properties(0)
    result = {
        "gpu": prop.name, "sms": prop.multi_processor_count, "l2_bytes": getattr(prop, "L2_cache_size", None),
        "driver": driver_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "rows": [],
    }
    print(f"# {prop.name}: tables={args.tables} rows={args.rows} dim={args.dim} batch={args.batch} "
          f"pooling={args.pooling} indices={args.indices}", flush=True)
    dims = parse_dims(args.dim)
    if len(dims) > 1 and args.hot_rows_budget_mb > 0:
        raise SystemExit("--hot-rows-budget-mb: not with several --dim values")
    lengths = bag_lengths(args.pooling, args.batch, args.seed)
    ids = make_indices(args.indices, args.tables, args.rows, int(lengths.sum()), args.seed)
    sample = make_indices(args.indices, args.tables, args.rows, int(lengths.sum()), args.seed + 1) \
        if args.hot_rows_budget_mb > 0 else None
    for dtype in args.dtypes.split(","):
        print(f"## {dtype}: building tables ...", flush=True)
        wl = Workload(args, ids, lengths, dtype, dims[0]) if len(dims) == 1 else \
            MixedWorkload(args, ids, lengths, dtype, dims)
        ref, mag = wl.reference()
        for name, make in _candidates(args, wl, sample):
            result["rows"].append(_run_candidate(args, wl, dtype, name, make, ref, mag))
        del wl, ref, mag
        torch.cuda.empty_cache()
    add_ratios(result)
    return result


def add_kernel_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench kernels` (defaults: the paper's configuration)."""
    p.add_argument("--tables", type=int, default=12)
    p.add_argument("--rows", type=int, default=500_000, help="rows per table")
    p.add_argument("--dim", default="128", help="row width, or a comma list for tables of several widths in one "
                   "batch (the tables split into one group per width, in order)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--pooling", default="150", help="lookups per bag: L (every bag), or var:L (uniform in [0, 2L], "
                   "the same lengths for every table)")
    p.add_argument("--indices", default="uniform", help="uniform | zipf:<alpha> | trace:<file>")
    p.add_argument("--dtypes", default="fp32,fp16,int8", help="comma list of fp32,fp16,bf16,int8,int4")
    p.add_argument("--variants", default=",".join(contract.VARIANTS), help="our kernel variants to run")
    p.add_argument("--pinned-variants", default="auto,l2pin,combined",
                   help="variants also run on hot-first reordered tables with pinned rows")
    p.add_argument("--hot-rows-budget-mb", type=int, default=0,
                   help="L2 bytes for pinned hot rows (rows profiled from a second, independent sample); 0 = off")
    p.add_argument("--prefetch-distance", type=int, default=0)
    p.add_argument("--no-split-scales", dest="split_scales", action="store_false",
                   help="int8: skip the rows of our variants on tables stored split_scales=1 (ours:V+split)")
    p.add_argument("--index-type", choices=("int32", "int64"), default="int32",
                   help="ids and offsets our op gets (default int32, as FBGEMM's rows get them)")
    p.add_argument("--baselines", default="torch,fbgemm")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cold-l2", action="store_true", help="flush L2 before every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write results here")
    p.add_argument("--plot", help="write a PNG plot here")


def main_kernels(args) -> int:
    """Runs `bench kernels`, prints the table, writes JSON and plot; exit 1 if any output was wrong."""
    t0 = time.time()
    result = run_kernels(args)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    print(f"done in {time.time() - t0:.0f} s")
    return 1 if any(r.get("status") == "wrong" for r in result["rows"]) else 0
