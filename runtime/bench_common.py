"""What the parts of ``dlrm-deploy bench e2e`` share: a result Row, the Bench state (options, model,
inputs on the device, the reference output), and progress printing."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from .accuracy import TOLERANCE, compare

TORCH_BACKENDS = ("torch", "torch+fbgemm", "torch+fbgemm+cudagraph", "torch+fbgemm+compile", "torch+cudagraph")


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
    speedup_vs_best_torch: float | None = None
    note: str = ""
    skipped: str = ""
    extra: dict = field(default_factory=dict)


def say(msg: str) -> None:
    """Prints a progress line at once."""
    print(msg, flush=True)


def gib(n: float | None) -> str:
    """Bytes as GiB text ("-" for None)."""
    return "-" if n is None else f"{n / 2**30:.3f} GiB"




@dataclass
class Bench:
    """What the rows share: options, the model, device and inputs (on the device), the reference."""

    args: argparse.Namespace
    cfg: object
    model: object
    device: str
    inputs: tuple
    check_inputs: tuple
    dev_inputs: tuple = ()
    dev_check: tuple = ()
    ref: np.ndarray | None = None
    ort_options: dict = field(default_factory=dict)
    workdir: str = ""
    batch: int = 0
    pooling: int | str = 0
    threads: int | None = None
    tdev: object = None

    @property
    def cuda(self) -> bool:
        """Whether the rows run on a CUDA device."""
        return self.device == "cuda"


def say_outcome(row: Row) -> None:
    """Prints a row's outcome: its skip reason, or its error and median time."""
    say(f"    {row.name}: " + (f"skipped ({row.skipped})" if row.skipped else
                               (f"max err {row.max_abs_err:.2e}, " if row.max_abs_err is not None else "") +
                               (f"median {row.median_ms:.3f} ms" if row.median_ms is not None else "FAILED")))


def check_output(row: Row, got, ref) -> bool:
    """Compares got (tensor or array) with the reference; sets the row's errors and ok."""
    if hasattr(got, "detach"):
        got = got.detach().float().cpu().numpy()
    row.max_abs_err, row.max_rel_err = compare(got, ref)
    row.ok = row.max_abs_err <= TOLERANCE[row.dtype]
    if not row.ok:
        row.note = "output differs from PyTorch; not timed"
    return row.ok


def set_times(row: Row, t: dict) -> None:
    """Copies the timer's median, min, max (ms) and runs into row."""
    for k in ("median_ms", "min_ms", "max_ms", "runs"):
        setattr(row, k, t[k])

