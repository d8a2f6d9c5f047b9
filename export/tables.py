"""Embedding-table transformations done at export time: storage dtype conversion, int8 and int4
row-wise quantization, hot-row profiling, frequency reordering and packing into the op's weights blob.

Layouts follow the op contract (docs/op_contract.md): an int8 row is ``dim`` uint8 codes, an fp32
scale, an fp32 bias, zero-padded to a multiple of 16 bytes; an int4 row is ``dim / 2`` bytes of
4-bit codes (two per byte, the even column in the low nibble), an fp32 scale, an fp32 bias, zero-padded
to a multiple of 16 bytes; with ``hot_first`` the packed blob holds every table's first
``pinned_rows`` rows first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_deploy import contract as C
from dlrm_deploy import layout as _layout

DEFAULT_L2_BUDGET_BYTES = 30 * 1024 * 1024  # hot rows pinned in L2, all tables together (H100: 50 MB L2)
DEFAULT_HOT_COVERAGE = 0.9  # fraction of sampled lookups the pinned rows should serve

def storage_row_bytes(dim: int, dtype: str) -> int:
    """Bytes of one stored row of a ``dim``-wide table in ``dtype`` (fp32/fp16/bf16/int8/int4)."""
    return C.row_bytes(dtype, dim)


def quantize_int8_rowwise(weight: torch.Tensor) -> torch.Tensor:
    """Row-wise int8 quantization: float [rows, dim] -> uint8 [rows, row_bytes] (dim divisible by 4).

    Per row: scale = (max - min) / 255, bias = min, code = round((x - bias) / scale), so
    x ~= scale * code + bias (error <= scale / 2). row_bytes = ceil((dim + 8) / 16) * 16: the codes,
    fp32 scale, fp32 bias, zero padding. (The layout code is ``dlrm_deploy.layout``, shared with the
    benchmarks and tests.) Quantizes in chunks of rows to bound temporaries on 500K-row tables.
    """
    return _in_chunks(_layout.quantize_int8_rowwise, weight)


def quantize_int4_rowwise(weight: torch.Tensor) -> torch.Tensor:
    """Row-wise int4 quantization: float [rows, dim] -> uint8 [rows, row_bytes] (dim divisible by 8).

    Per row: scale = (max - min) / 15, bias = min, code = round((x - bias) / scale) (ties to even),
    clamped to 0..15, so x ~= scale * code + bias (error <= scale / 2). row_bytes = ceil((dim / 2 +
    8) / 16) * 16: the codes two per byte (even column in the low nibble), fp32 scale, fp32 bias, zero
    padding (``dlrm_deploy.layout``). Quantizes in chunks of rows to bound temporaries.
    """
    return _in_chunks(_layout.quantize_int4_rowwise, weight)


def _in_chunks(quantize, weight: torch.Tensor, chunk: int = 1 << 17) -> torch.Tensor:
    """quantize over [rows, dim] weight, chunk rows at a time (bounds temporaries on big tables)."""
    if weight.dim() != 2:
        raise ValueError(f"expected a [rows, dim] table, got shape {list(weight.shape)}")
    w = weight.detach()
    if w.shape[0] <= chunk:
        return quantize(w)
    return torch.cat([quantize(w[s:s + chunk]) for s in range(0, w.shape[0], chunk)])


def dequantize_int4_rowwise(packed: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """Inverse of ``quantize_int4_rowwise``: uint8 [rows, row_bytes] -> float32 [rows, dim] values."""
    a = np.ascontiguousarray(packed.numpy() if isinstance(packed, torch.Tensor) else packed, dtype=np.uint8)
    return _layout.dequantize_int4_rowwise(a, dim).astype(np.float32)


def dequantize_int8_rowwise(packed: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """Inverse of ``quantize_int8_rowwise``: uint8 [rows, row_bytes] -> float32 [rows, dim] values."""
    a = np.ascontiguousarray(packed.numpy() if isinstance(packed, torch.Tensor) else packed, dtype=np.uint8)
    return _layout.dequantize_int8_rowwise(a, dim).astype(np.float32)


def convert_table(weight: torch.Tensor, dtype: str) -> torch.Tensor:
    """A [rows, dim] float table in the op's storage dtype: fp32/fp16/bf16 elements, or int8 / int4
    row-wise (uint8 [rows, row_bytes], see ``quantize_int8_rowwise`` / ``quantize_int4_rowwise``)."""
    if dtype not in C.DTYPES:
        raise ValueError(f"dtype must be one of {C.DTYPES}, got {dtype!r}")
    w = weight.detach()
    if dtype == "int8":
        return quantize_int8_rowwise(w)
    if dtype == "int4":
        return quantize_int4_rowwise(w)
    return w.to(getattr(torch, C.DTYPE_INFO[dtype].torch)).contiguous()


# ---------------------------------------------------------------------------------------------
# Hot rows


def count_rows(indices, rows: int) -> np.ndarray:
    """Lookups per row (int64 [rows]) in a sample of row ids; ids outside [0, rows) are ignored."""
    ids = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    ids = ids.reshape(-1).astype(np.int64, copy=False)
    ids = ids[(ids >= 0) & (ids < rows)]
    return np.bincount(ids, minlength=rows).astype(np.int64)


def order_by_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows by descending lookup count (ties: lower row first), from counts rather than ids
    (``dlrm_deploy.layout.frequency_order`` takes ids).

    Returns (order, remap): new row r holds old row order[r]; old row i moves to remap[i].
    """
    order = np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size, dtype=order.dtype)
    return order.astype(np.int64), remap.astype(np.int64)


def choose_pinned_rows(counts: list[np.ndarray], row_bytes: int, *, coverage: float = DEFAULT_HOT_COVERAGE,
                       l2_budget_bytes: int = DEFAULT_L2_BUDGET_BYTES) -> int:
    """Hot rows per table P (one P for all tables, as the op has one ``pinned_rows``).

    The smallest P whose top-P rows of every table serve ``coverage`` of all sampled lookups, capped
    so that T * P * row_bytes <= l2_budget_bytes and by the smallest table. 0 when nothing was sampled.
    """
    if not counts:
        return 0
    total = sum(int(c.sum()) for c in counts)
    if total == 0:
        return 0
    cap = min(int(l2_budget_bytes) // max(1, len(counts) * row_bytes), min(c.size for c in counts))
    if cap <= 0:
        return 0
    covered = np.zeros(cap, dtype=np.int64)
    for c in counts:
        top = np.sort(c)[::-1][:cap]
        covered[:top.size] += np.cumsum(top)
        covered[top.size:] += int(top.sum())
    need = coverage * total
    hit = np.nonzero(covered >= need)[0]
    return int(hit[0]) + 1 if hit.size else cap


@dataclass
class HotRowPlan:
    """Frequency reordering of one table: rows, the permutation and the share of sampled lookups
    served by the first ``pinned_rows`` rows after reordering."""

    rows: int
    order: np.ndarray  # new row r holds old row order[r]
    remap: np.ndarray  # old row i is new row remap[i]
    counts: np.ndarray  # sampled lookups per old row


def _capture_indices(model: torch.nn.Module, batches) -> dict[str, list[torch.Tensor]]:
    """Runs the model on each input batch, recording the ids every nn.EmbeddingBag looks up."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.EmbeddingBag):
            def hook(_m, args, kwargs, _name=name):
                ids = args[0] if args else kwargs.get("input")
                seen.setdefault(_name, []).append(ids.detach().reshape(-1).cpu())
            hooks.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for b in batches:
                model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for h in hooks:
            h.remove()
    return seen


def profile_hot_rows(model: torch.nn.Module, sample) -> dict[str, np.ndarray]:
    """Lookups per row of every ``nn.EmbeddingBag`` of model (by module name) in a sample.

    sample is one of:
      - a path (str or os.PathLike): a trace file, one row id per line; each table counts the ids
        below its row count (the ids the index loader would keep);
      - a dict {module name: 1-D ids (tensor or array)};
      - a list of 1-D id tensors/arrays, one per EmbeddingBag in ``model.named_modules()`` order;
      - a tuple of model inputs, or a list of such tuples: the model runs on them and the ids each
        EmbeddingBag receives are counted.
    Returns {module name: int64 counts [rows]}.
    """
    bags = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.EmbeddingBag)]
    if isinstance(sample, (str, os.PathLike)):
        from .index_sources import read_trace

        ids = read_trace(sample)
        return {n: count_rows(ids, m.num_embeddings) for n, m in bags}
    if isinstance(sample, dict):
        unknown = set(sample) - {n for n, _ in bags}
        if unknown:
            raise ValueError(f"hot-row sample names unknown EmbeddingBag modules: {sorted(unknown)}")
        return {n: count_rows(sample[n], m.num_embeddings) for n, m in bags if n in sample}
    if isinstance(sample, list) and sample and all(isinstance(s, (torch.Tensor, np.ndarray)) for s in sample):
        if len(sample) != len(bags):
            raise ValueError(f"hot-row sample has {len(sample)} id lists for {len(bags)} EmbeddingBag modules")
        return {n: count_rows(s, m.num_embeddings) for (n, m), s in zip(bags, sample)}
    if isinstance(sample, tuple):
        batches = [sample]
    elif isinstance(sample, list) and all(isinstance(s, tuple) for s in sample):
        batches = sample
    else:
        raise TypeError("hot-row sample must be a trace path, a dict or list of id tensors, or model inputs "
                        "(a tuple, or a list of tuples)")
    seen = _capture_indices(model, batches)
    return {n: count_rows(torch.cat(seen[n]), m.num_embeddings) for n, m in bags if n in seen}


def plan_hot_rows(counts: np.ndarray) -> HotRowPlan:
    """Frequency reordering for one table from its sampled lookup counts."""
    order, remap = order_by_counts(counts)
    return HotRowPlan(rows=int(counts.size), order=order, remap=remap, counts=np.asarray(counts))


def hot_coverage(counts: np.ndarray, pinned_rows: int) -> float:
    """Share (0..1) of the sampled lookups that the ``pinned_rows`` most frequent rows serve."""
    total = int(counts.sum())
    if total == 0 or pinned_rows <= 0:
        return 0.0
    return float(np.sort(counts)[::-1][:pinned_rows].sum() / total)


def pack_tables(tables: list[np.ndarray], pinned_rows: int = 0, hot_first: bool = False) -> np.ndarray:
    """Packs same-width tables (2-D arrays of one dtype, rows in stored form) into the op's weights
    blob: table t's rows after table t-1's, or with hot_first every table's first ``pinned_rows`` rows
    first (table t at t*P), then each table's remaining rows in table order (``dlrm_deploy.layout``)."""
    return _layout.pack_tables(tables, int(pinned_rows), bool(hot_first))
