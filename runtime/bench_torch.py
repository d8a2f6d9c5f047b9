"""The PyTorch rows of ``dlrm-deploy bench e2e`` after eager: FBGEMM's TBE eager, in a CUDA graph
and under torch.compile (reduce-overhead), and nn.EmbeddingBag in a CUDA graph. Each row's output
is checked against the reference before it is timed."""

from __future__ import annotations

import sys
import time

from .accuracy import TOLERANCE, compare
from .bench_common import Bench, Row, check_output, say, say_outcome, set_times
from .fbgemm_tbe import TBEModel, tbe_inputs
from .timing import BudgetExceeded, deadline, time_torch, time_wall

GPU_ONLY = "needs CUDA (running on the CPU): CUDA graphs and FBGEMM's inference TBE capture/run GPU work only"


def eager_row(row: Row, fn, check_args, time_args, ref, runs: int, warmup: int, cuda: bool) -> Row:
    """fn(*check_args) checked against ref, then fn(*time_args) timed."""
    import torch

    with torch.no_grad():
        ok = check_output(row, fn(*check_args), ref)
        if ok:
            set_times(row, time_torch(lambda: fn(*time_args), runs, warmup, cuda))
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
    import torch

    graph, static, out = capture_graph(fn, check_args)
    graph.replay()
    if not check_output(row, out, ref):
        return row
    if not _copy_into(static, time_args):  # e.g. variable bag lengths: other id counts
        del graph, out
        graph, static, out = capture_graph(fn, time_args)
        row.extra["captures"] = 2
    set_times(row, time_torch(graph.replay, runs, warmup, cuda=True))
    row.extra["timer"] = "CUDA events around replay()"

    def synchronised():
        graph.replay()
        torch.cuda.synchronize()

    row.extra["wall"] = time_wall(synchronised, runs, warmup)  # as the ORT rows' extra["wall"]
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
            ok = check_output(row, call(check_args), ref)
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
            set_times(row, time_torch(lambda: call(time_args), runs, warmup, cuda=True))
    return row


def _guarded(row: Row, what: str, fn) -> Row:
    """Runs fn() (which fills row); an exception becomes the row's skip reason. Prints the outcome."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
        row.skipped = f"{what}{type(e).__name__}: {e}"[:400]
    say_outcome(row)
    return row


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
            say(f"    {r.name}: skipped ({r.skipped})")
        return rows
    model = b.model.to(b.tdev)
    try:
        tbe = None
        if fb:
            try:
                tbe = TBEModel(model, td, b.tdev)
            except Exception as e:  # noqa: BLE001 - e.g. fbgemm_gpu not installed
                for r in fb:
                    r.skipped = f"FBGEMM TBE: {type(e).__name__}: {e}"[:300]
                    say(f"    {r.name}: skipped ({r.skipped})")
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
