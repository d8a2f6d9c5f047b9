"""Timers of the benchmarks and the demo (milliseconds per call), and a wall-clock deadline.

``time_wall`` times a callable with perf_counter; ``time_torch`` with CUDA events (or perf_counter on the CPU); ``time_cuda`` is the
kernel benchmark's CUDA-event timer that hides host overhead and can flush L2; ``time_ort`` times an
ONNX Runtime session; ``time_interleaved`` times several CPU callables in alternating blocks (fair
on a shared machine); ``deadline`` bounds a block's wall-clock time (torch.compile's budget).
"""

from __future__ import annotations

import contextlib
import signal
import statistics
import threading
import time


def summary_ms(times: list[float]) -> dict:
    """{median_ms, min_ms, max_ms, runs} of per-run times in milliseconds."""
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": len(times)}


def time_wall(fn, runs: int, warmup: int) -> dict:
    """Wall-clock milliseconds (perf_counter) of fn() over ``runs`` calls after ``warmup`` ones:
    {median_ms, min_ms, max_ms, runs}."""
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return summary_ms(times)


def time_torch(fn, runs: int, warmup: int, cuda: bool) -> dict:
    """Times fn() ``runs`` times after ``warmup`` calls. CUDA: events around each call on the current
    stream; CPU: perf_counter. Returns {median_ms, min_ms, max_ms, runs}."""
    if not cuda:
        return time_wall(fn, runs, warmup)
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(runs):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summary_ms(times)


def time_ort(sess, feeds: dict, runs: int, warmup: int, events: bool = False) -> dict:
    """Times an OrtSession on feeds copied to its device once: synchronised wall-clock per run, or
    (events=True, a session on a stream of the caller's) CUDA events like time_torch."""
    r = sess.time_runs(feeds, runs=runs, warmup=warmup, events=events)
    return {k: r[k] for k in ("median_ms", "min_ms", "max_ms", "runs")}


def time_cuda(fn, runs: int, warmup: int, cold_l2: bool) -> dict:
    """Median/min/max milliseconds of fn() between CUDA events. A sleep kernel queued before each
    start event lets the host enqueue the whole region first, so host overhead is not timed."""
    import torch

    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda") if cold_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        if flush is not None:
            flush.fill_(1)
        torch.cuda._sleep(2_000_000)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return summary_ms(times)


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


def time_interleaved(fns: dict, runs: int, warmup: int, block: int = 5) -> dict:
    """Times each fn of fns `runs` times, in alternating blocks of `block` runs, so that load from
    other processes on a shared machine falls on every row alike; a pause before each block lets the
    other library's spinning worker threads (OpenMP's, ONNX Runtime's) go idle first.
    Returns {name: {median_ms, min_ms, max_ms, runs}}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    ts = {name: [] for name in fns}
    while min(len(v) for v in ts.values()) < runs:
        for name, fn in fns.items():
            time.sleep(0.2)
            fn()  # untimed: wakes this library's threads
            for _ in range(min(block, runs - len(ts[name]))):
                t = time.perf_counter()
                fn()
                ts[name].append((time.perf_counter() - t) * 1e3)
    return {name: summary_ms(v) for name, v in ts.items()}
