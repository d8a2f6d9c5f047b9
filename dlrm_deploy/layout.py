"""Packing tables into the op's weight blob (docs/op_contract.md): plain or hot-first row order,
and int8 / int4 row-wise quantization, one copy shared by export, tests and benchmarks. Imports numpy
only; quantize_int8_rowwise / quantize_int4_rowwise import torch when called (they quantize tensors
on their own device).
"""

from __future__ import annotations

import numpy as np

from .contract import int4_row_bytes, int8_row_bytes


def _rowwise_codes(table, levels: int, multiple: int, name: str):
    """Per-row min/max quantization shared by int8 and int4, in fp32 on table's device:
    (as_numpy, tensor, codes uint8 [rows, dim] in 0..levels, scale, bias). A constant row gets
    scale 1 (codes 0); codes round half to even (torch.round)."""
    import torch

    as_numpy = not isinstance(table, torch.Tensor)
    t = torch.as_tensor(table).to(torch.float32)
    dim = t.shape[1]
    if dim % multiple:
        raise ValueError(f"{name} row-wise tables need dim divisible by {multiple}, got {dim}")
    lo, hi = t.amin(dim=1), t.amax(dim=1)
    scale = (hi - lo) / float(levels)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.clamp(torch.round((t - lo[:, None]) / scale[:, None]), 0, levels).to(torch.uint8)
    return as_numpy, t, codes, scale, lo


def _rows_out(as_numpy: bool, t, row_bytes: int, code_bytes, first: int, scale, bias):
    """The rows: code_bytes [rows, first], then fp32 scale and bias, zero padding to row_bytes."""
    import torch

    out = torch.zeros((t.shape[0], row_bytes), dtype=torch.uint8, device=t.device)
    out[:, :first] = code_bytes
    out[:, first:first + 8] = torch.stack([scale, bias], dim=1).contiguous().view(torch.uint8)
    return out.cpu().numpy() if as_numpy else out


def quantize_int8_rowwise(table):
    """[rows, dim] float -> [rows, row_bytes] uint8 rows: dim codes, fp32 scale, fp32 bias, zero pad.

    scale = (max - min) / 255 and bias = min per row, code = round((x - bias) / scale); a constant
    row gets scale 1 (codes 0). Dequantized value = scale * code + bias (within scale / 2 of x).
    Takes and returns a numpy array, or a torch tensor (on its device: quantize big tables on the GPU).
    """
    as_numpy, t, codes, scale, lo = _rowwise_codes(table, 255, 4, "int8")
    dim = t.shape[1]
    return _rows_out(as_numpy, t, int8_row_bytes(dim), codes, dim, scale, lo)


def split_scales(rows, dim: int):
    """int8 rows ([rows, row_bytes]: codes, scale, bias, padding) in the split_scales=1 layout:
    [rows, dim + 8] bytes holding every row's codes (row g at byte g*dim), then every row's fp32
    scale and bias (at rows*dim + 8g). Row order stays (pack the tables first). Takes and returns a
    numpy array, or a torch tensor (on its device)."""
    if isinstance(rows, np.ndarray):
        cat = np.concatenate
    else:
        import torch

        cat = torch.cat
    parts = [rows[:, :dim].reshape(-1), rows[:, dim:dim + 8].reshape(-1)]
    return cat(parts).reshape(rows.shape[0], dim + 8)


def join_scales(blob: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of split_scales: [rows, dim + 8] split bytes -> [rows, int8_row_bytes(dim)] rows."""
    flat = np.asarray(blob).reshape(-1)
    rows = flat.size // (dim + 8)
    out = np.zeros((rows, int8_row_bytes(dim)), np.uint8)
    out[:, :dim] = flat[:rows * dim].reshape(rows, dim)
    out[:, dim:dim + 8] = flat[rows * dim:].reshape(rows, 8)
    return out


def int8_scale_bias(rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) float32 [rows] of int8 rows (the row form)."""
    sb = np.ascontiguousarray(np.asarray(rows, dtype=np.uint8)[:, dim:dim + 8]).view(np.float32)
    return sb[:, 0].copy(), sb[:, 1].copy()


def dequantize_int8_rowwise(rows: np.ndarray, dim: int) -> np.ndarray:
    """Inverse view of quantize_int8_rowwise: [rows, row_bytes] uint8 -> [rows, dim] float64 values."""
    scale, bias = int8_scale_bias(rows, dim)
    return rows[:, :dim].astype(np.float64) * scale.astype(np.float64)[:, None] + bias.astype(np.float64)[:, None]


def quantize_int4_rowwise(table):
    """[rows, dim] float -> [rows, row_bytes] uint8 int4 rows: dim/2 bytes of codes (column 2i in the
    low nibble of byte i, 2i+1 in the high one), fp32 scale, fp32 bias, zero pad to 16 bytes.

    Per row, computed in fp32: bias = min, scale = (max - min) / 15 (a constant row gets scale 1, codes
    0), code = clamp(round((x - bias) / scale), 0, 15) with round-half-to-even (torch.round), so
    the dequantized value scale * code + bias is within scale / 2 of x (up to fp32 rounding).
    dim must be divisible by 8. Takes and returns a numpy array, or a torch tensor (on its device).
    """
    as_numpy, t, codes, scale, lo = _rowwise_codes(table, 15, 8, "int4")
    dim = t.shape[1]
    return _rows_out(as_numpy, t, int4_row_bytes(dim), codes[:, 0::2] | (codes[:, 1::2] << 4), dim // 2, scale, lo)


def int4_codes(rows: np.ndarray, dim: int) -> np.ndarray:
    """The codes of int4 rows: [rows, row_bytes] uint8 -> [rows, dim] uint8 values 0..15."""
    packed = np.asarray(rows, dtype=np.uint8)[:, :dim // 2]
    codes = np.empty((packed.shape[0], dim), dtype=np.uint8)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    return codes


def int4_scale_bias(rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) float32 [rows] of int4 rows."""
    sb = np.ascontiguousarray(np.asarray(rows, dtype=np.uint8)[:, dim // 2:dim // 2 + 8]).view(np.float32)
    return sb[:, 0].copy(), sb[:, 1].copy()


def dequantize_int4_rowwise(rows: np.ndarray, dim: int) -> np.ndarray:
    """Inverse view of quantize_int4_rowwise: [rows, row_bytes] uint8 -> [rows, dim] float64 values."""
    scale, bias = int4_scale_bias(rows, dim)
    return int4_codes(rows, dim).astype(np.float64) * scale.astype(np.float64)[:, None] + bias.astype(np.float64)[:, None]


def pack_tables(tables: list[np.ndarray], pinned_rows: int = 0, hot_first: bool = False) -> np.ndarray:
    """Concatenates per-table row arrays (same width and dtype) into the op's weight blob.

    Plain: table t's rows follow table t-1's. hot_first: first each table's first pinned_rows
    rows (table t at rows t*P .. t*P+P-1), then each table's remaining rows in table order.
    """
    if not hot_first or pinned_rows == 0:
        return np.ascontiguousarray(np.concatenate(tables, axis=0))
    if any(t.shape[0] < pinned_rows for t in tables):
        raise ValueError("hot_first: every table needs at least pinned_rows rows")
    hot = [t[:pinned_rows] for t in tables]
    cold = [t[pinned_rows:] for t in tables]
    return np.ascontiguousarray(np.concatenate(hot + cold, axis=0))


def frequency_order(indices: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by descending lookup count in a sample of indices (ties by row id).

    Returns (order, remap): new row r holds old row order[r]; old id i becomes remap[i].
    """
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=rows)[:rows]
    order = np.lexsort((np.arange(rows), -counts)).astype(np.int64)
    remap = np.empty(rows, dtype=np.int64)
    remap[order] = np.arange(rows, dtype=np.int64)
    return order, remap
