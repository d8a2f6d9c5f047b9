"""Index sources, the one set shared by the model's inputs (``make_indices``) and the benchmarks:
row ids drawn uniformly, Zipf-like over a random permutation of the rows, or read from a trace file.

A source is named by text: ``uniform``, ``zipf:<alpha>`` or ``trace:<file>`` (one id per line).
"""

from __future__ import annotations

import os

import numpy as np


def zipf_sampler(rows: int, alpha: float, rng: np.random.Generator):
    """Zipf-like popularity over a random permutation of rows: rank k (0-based) has weight
    1/(k+1)^alpha; the row at rank k is perm[k]. Works for any alpha >= 0."""
    weights = 1.0 / np.arange(1, rows + 1, dtype=np.float64) ** alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(rows)

    def sample(n: int) -> np.ndarray:
        ranks = np.searchsorted(cdf, rng.random(n), side="right")
        return perm[np.minimum(ranks, rows - 1)]

    return sample


_TRACE_CACHE: dict[str, np.ndarray] = {}


def read_trace(path: str | os.PathLike) -> np.ndarray:
    """Row ids of a trace file: one integer per line (blank lines ignored), as int64."""
    key = os.fspath(path)
    if key not in _TRACE_CACHE:
        with open(key) as f:
            ids = np.array([int(line) for line in f if line.strip()], dtype=np.int64)
        if ids.size == 0:
            raise ValueError(f"trace file {key} holds no row ids")
        _TRACE_CACHE[key] = ids
    return _TRACE_CACHE[key]


class TraceReader:
    """Reads a trace circularly, one position shared by all tables; ids >= rows (or < 0) of the
    table being filled are skipped, as the paper's loader drops them. start: the first position
    (lines of the file; past its end wraps around)."""

    def __init__(self, ids: np.ndarray, start: int = 0):
        self.ids = ids
        self.pos = int(start)

    def take(self, n: int, rows: int) -> np.ndarray:
        """The next n ids below rows."""
        length = self.ids.size
        valid = np.nonzero((self.ids >= 0) & (self.ids < rows))[0]
        if valid.size == 0:
            raise ValueError(f"trace holds no row id below {rows}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        base = (self.pos // length) * length
        k = int(np.searchsorted(valid, self.pos % length))
        j = k + np.arange(n)
        absolute = base + (j // valid.size) * length + valid[j % valid.size]
        self.pos = int(absolute[-1]) + 1
        return self.ids[absolute % length]


def parse_index_source(source: str) -> tuple[str, object]:
    """``"uniform"`` -> ("uniform", None); ``"zipf:1.05"`` -> ("zipf", 1.05);
    ``"trace:FILE"`` -> ("trace", "FILE"). Raises ValueError otherwise."""
    if source == "uniform":
        return "uniform", None
    if source.startswith("zipf:"):
        alpha = float(source[5:])
        if alpha < 0:
            raise ValueError("zipf alpha must be >= 0")
        return "zipf", alpha
    if source.startswith("trace:"):
        return "trace", source[6:]
    raise ValueError(f"unknown index source '{source}': use uniform, zipf:<alpha> or trace:<file>")


class IndexSource:
    """Row ids of one source, table after table: ``take(n, rows)`` returns n int64 ids below rows.

    rng draws the uniform and Zipf ids (a fresh permutation of the rows per call for Zipf, as
    independent features would have); a trace is read from trace_start (a position in the file).
    Raises ValueError for an unknown source."""

    def __init__(self, source: str, rng: np.random.Generator, trace_start: int = 0):
        self.kind, self.arg = parse_index_source(source)
        self.rng = rng
        self.trace = TraceReader(read_trace(self.arg), trace_start) if self.kind == "trace" else None

    def take(self, n: int, rows: int) -> np.ndarray:
        """n ids below rows."""
        if self.kind == "uniform":
            return self.rng.integers(0, rows, size=n)
        if self.kind == "zipf":
            return zipf_sampler(rows, float(self.arg), self.rng)(n)
        return self.trace.take(n, rows)
