"""One table's embedding stage on the CPU: PyTorch's F.embedding_bag against dlrm_deploy::EmbeddingBag
in ONNX Runtime's CPU provider (and, optionally, the core's sequential reference), same inputs, same
thread count. Median of --runs wall-clock runs after warm-up, taken in alternating blocks
(runtime/timing.py time_interleaved); outputs checked before timing.

    python scripts/bench_cpu_kernel.py --rows 500000 --dim 128 --batch 2048 --pooling 150 --threads 2

Pages: PyTorch's default CPU allocator gives a big table 4 KB pages (THP_MEM_ALLOC_ENABLE=1 in the
environment makes it ask for transparent huge pages); our op asks for huge pages for the table ONNX
Runtime holds (DD_CPU_HUGE_PAGES=0 turns that off). The row "PyTorch, huge-page table" runs
F.embedding_bag on a copy of the table in huge pages (what THP_MEM_ALLOC_ENABLE=1 gives it);
--no-torch-huge-pages leaves it out. The huge-page share of each table is printed.

    python scripts/bench_cpu_kernel.py --dlrm paper --threads 2 --runs 10

--dlrm CONFIG times a whole DLRM instead (export/dlrm.py's config; --batch/--pooling as above, or
the config's): PyTorch eager against its export in ONNX Runtime with our op, interleaved like the
one-table rows (``dlrm-deploy bench e2e`` times its rows one after the other, which a shared
machine's changing load can skew). The export goes to a temporary folder (big tables as external
data, memory-mapped by ONNX Runtime).
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os

import numpy as np

from dlrm_deploy.runtime.bench_memory import smaps_kb


def _model(weight: np.ndarray, dtype: str, psw: bool) -> bytes:
    """One EmbeddingBag node over an initializer table (what the exporter writes for one table)."""
    from onnx import TensorProto, helper

    from dlrm_deploy import contract

    elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[dtype]
    rows, dim = weight.shape
    init = helper.make_tensor("weights", elem, weight.shape, weight.tobytes(), raw=True)
    inputs = [helper.make_tensor_value_info("indices", TensorProto.INT64, ["N"]),
              helper.make_tensor_value_info("offsets", TensorProto.INT64, ["B"])]
    names = ["weights", "indices", "offsets"]
    if psw:
        inputs.append(helper.make_tensor_value_info("per_sample_weights", TensorProto.FLOAT, ["N"]))
        names.append("per_sample_weights")
    node = helper.make_node(contract.OP_TYPE, names, ["pooled"], domain=contract.DOMAIN, name="emb",
                            table_rows=[rows], dim=dim, dtype=dtype, mode="sum")
    out = helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", dim])
    graph = helper.make_graph([node], "one_table", inputs, [out], initializer=[init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(contract.DOMAIN, 1)])
    return model.SerializeToString()


def _huge_page_share(t) -> str:
    lo = t.data_ptr()
    hi = lo + t.numel() * t.element_size()
    kb = smaps_kb("AnonHugePages", lo, hi)
    return "unknown" if kb < 0 else f"{min(kb * 1024, hi - lo) / (hi - lo):.0%}"


def _huge_page_copy(t):
    """A copy of t in an anonymous mapping advised for transparent huge pages before it is touched."""
    import torch

    nbytes = t.numel() * t.element_size()
    buf = mmap.mmap(-1, nbytes + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared memory: no THP
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(buf, dtype=np.uint8)
    start = (-raw.ctypes.data) % (2 << 20)  # 2 MB-aligned start
    out = torch.from_numpy(raw[start:start + nbytes]).view(t.dtype).view(t.shape)
    out.copy_(t)
    out._keep_alive = buf  # the mapping lives as long as the tensor
    return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _dlrm(args) -> int:
    """Whole DLRM: PyTorch eager vs ONNX Runtime + our op, interleaved (see the module's doc)."""
    import tempfile

    import torch

    from dlrm_deploy.runtime import ort as dd_ort
    from dlrm_deploy.runtime.accuracy import onnx_feeds
    from dlrm_deploy.runtime.timing import time_interleaved
    from export.dlrm import DLRM, get_config, make_inputs
    from export.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    cfg = get_config(args.dlrm)
    batch = cfg.batch if args.batch is None else args.batch
    pooling = cfg.pooling if args.pooling is None else args.pooling
    print(f"DLRM {args.dlrm}: {len(cfg.table_rows)} tables, dim {cfg.dim}, batch {batch}, pooling {pooling}, "
          f"{args.threads} threads; torch {torch.__version__}; THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', '(unset)')}, DD_CPU_HUGE_PAGES="
          f"{os.environ.get('DD_CPU_HUGE_PAGES', '(unset)')}; load average {_load()}", flush=True)
    model = DLRM(cfg).eval()
    dense, indices, offsets = make_inputs(cfg, batch, pooling=pooling)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dlrm.onnx")
        export_onnx(model, make_inputs(cfg, 64, pooling=pooling), path)
        sess = dd_ort.ort_session(path, device="cpu", intra_op_num_threads=args.threads, inter_op_num_threads=1)
        feeds = onnx_feeds(sess.input_names, dense, indices, offsets)
        with torch.no_grad():
            want = model(dense, indices, offsets).numpy()
        err = float(np.max(np.abs(sess.run(feeds)[0] - want)))
        values = {k: dd_ort._ort().OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}

        def torch_run():
            with torch.no_grad():
                model(dense, indices, offsets)

        times = time_interleaved({"PyTorch eager": torch_run,
                                  "ORT CPU + dlrm_deploy op": lambda: sess.session.run_with_ort_values(
                                      sess.output_names, values)}, args.runs, args.warmup)
        tables = [e.weight for e in model.embeddings]
        print("huge pages: PyTorch tables " + ", ".join(_huge_page_share(t) for t in tables[:3]) +
              (", ..." if len(tables) > 3 else "") + f"; whole process {smaps_kb('AnonHugePages') / 1024:.0f} MB "
              f"anonymous, {smaps_kb('FilePmdMapped') / 1024:.0f} MB file-backed")
        del sess
    base = times["PyTorch eager"]["median_ms"]
    print(f"{'row':<34} {'median ms':>10} {'min':>8} {'max':>8} {'vs torch':>9}")
    for name, t in times.items():
        print(f"{name:<34} {t['median_ms']:>10.3f} {t['min_ms']:>8.3f} {t['max_ms']:>8.3f} {base / t['median_ms']:>8.2f}x")
    print(f"max |ORT - torch| = {err:.2e}; load average after {_load()}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="default 2048 (--dlrm: the config's)")
    p.add_argument("--pooling", type=int, default=None, help="default 150 (--dlrm: the config's)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--weighted", action="store_true", help="with per-sample weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reference", action="store_true", help="also time the core's sequential reference")
    p.add_argument("--no-torch-huge-pages", action="store_true",
                   help="leave out the PyTorch row on a huge-page copy of the table")
    p.add_argument("--dlrm", default=None, help="time a whole DLRM of this config (paper, small) instead")
    args = p.parse_args()
    if args.dlrm:
        return _dlrm(args)
    args.batch = 2048 if args.batch is None else args.batch
    args.pooling = 150 if args.pooling is None else args.pooling

    import torch
    import torch.nn.functional as F

    from dlrm_deploy.runtime import _core
    from dlrm_deploy.runtime import ort as dd_ort
    from dlrm_deploy.runtime.timing import time_interleaved

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    weight = torch.randn(args.rows, args.dim).to(tdt)
    n = args.batch * args.pooling
    ids = torch.from_numpy(rng.integers(0, args.rows, n))
    offsets = torch.arange(0, n, args.pooling, dtype=torch.int64)
    psw = torch.from_numpy(rng.standard_normal(n).astype(np.float32)) if args.weighted else None
    print(f"one table: {args.rows} rows x {args.dim} {args.dtype}, batch {args.batch}, pooling {args.pooling}, "
          f"{'weighted, ' if psw is not None else ''}{args.threads} threads; torch {torch.__version__}; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '(unset)')}, "
          f"DD_CPU_HUGE_PAGES={os.environ.get('DD_CPU_HUGE_PAGES', '(unset)')}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    with torch.no_grad():
        want = F.embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=psw).float().numpy()

    sess = dd_ort.ort_session(_model(weight.view(torch.int16).numpy().view(np.float16) if args.dtype == "fp16"
                                     else weight.numpy(), args.dtype, psw is not None),
                              device="cpu", intra_op_num_threads=args.threads, inter_op_num_threads=1)
    feeds = {"indices": ids.numpy(), "offsets": offsets.numpy()}
    if psw is not None:
        feeds["per_sample_weights"] = psw.numpy()
    got = sess.run(feeds)[0]
    err = float(np.max(np.abs(got - want)))
    ort_values = {k: dd_ort._ort().OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}

    def torch_run():
        with torch.no_grad():
            F.embedding_bag(ids, weight, offsets, mode="sum", per_sample_weights=psw)

    fns = {"PyTorch F.embedding_bag": torch_run,
           "ORT CPU + dlrm_deploy op": lambda: sess.session.run_with_ort_values(sess.output_names, ort_values)}
    pages = {"PyTorch table": _huge_page_share(weight)}
    if not args.no_torch_huge_pages:
        huge = _huge_page_copy(weight)
        pages["PyTorch huge-page copy"] = _huge_page_share(huge)

        def torch_huge_run():
            with torch.no_grad():
                F.embedding_bag(ids, huge, offsets, mode="sum", per_sample_weights=psw)

        fns["PyTorch, huge-page table"] = torch_huge_run
    if args.reference:
        cfg = _core.make_config({"table_rows": [args.rows], "dim": args.dim, "dtype": args.dtype, "mode": "sum"})
        L = _core.lib()
        f = L.dd_forward_cpu_reference
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.POINTER(_core.Config)] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + \
                     [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        out = np.empty((args.batch, args.dim), np.float32)
        buf = ctypes.create_string_buffer(512)
        wnp = weight.contiguous()
        call = lambda: f(ctypes.byref(cfg), wnp.data_ptr(), ids.data_ptr(), offsets.data_ptr(),  # noqa: E731
                         psw.data_ptr() if psw is not None else None, n, args.batch, out.ctypes.data, buf, 512)
        fns["core reference (1 thread)"] = call
    times = time_interleaved(fns, args.runs, args.warmup)
    # ORT's copy of the table is not reachable from here: the process's huge pages outside torch's.
    process_kb = smaps_kb("AnonHugePages")
    print("huge pages: " + ", ".join(f"{k} {v}" for k, v in pages.items()) +
          f"; whole process {process_kb / 1024:.0f} MB (table {weight.numel() * weight.element_size() / 2**20:.0f} MB)")
    rows = list(times.items())
    base = times["PyTorch F.embedding_bag"]["median_ms"]
    print(f"{'row':<34} {'median ms':>10} {'min':>8} {'max':>8} {'vs torch':>9}")
    for name, t in rows:
        print(f"{name:<34} {t['median_ms']:>10.3f} {t['min_ms']:>8.3f} {t['max_ms']:>8.3f} "
              f"{base / t['median_ms']:>8.2f}x")
    print(f"max |ORT - torch| = {err:.2e}; load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
