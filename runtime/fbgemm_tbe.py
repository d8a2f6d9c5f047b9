"""FBGEMM's table-batched embedding inference (``IntNBitTableBatchedEmbeddingBagsCodegen``), set up
once for every benchmark: the module over given tables, rows written into it, and a DLRM forward
that uses it for the embeddings.

The benchmarks' baseline configuration: tables on the device, sum pooling, fp32 output, bounds
checks off. FBGEMM's int8 and int4 rows carry an fp16 scale and bias (ours: fp32), so its outputs
are judged against their own dequantized values. Where FBGEMM's kernel puts the eight 4-bit codes
of a 32-bit word is read from the kernel itself (``int4_nibble_positions``), not assumed. Imports
fbgemm_gpu when called (an ImportError says it is not installed).
"""

from __future__ import annotations

import functools

DTYPES = ("fp32", "fp16", "int8", "int4")  # table storage FBGEMM's inference TBE has (no bf16)
LEVELS = {"int8": 255, "int4": 15}  # largest code of the row-wise dtypes


def import_tbe():
    """fbgemm_gpu's (SparseType, BoundsCheckMode, EmbeddingLocation, PoolingMode,
    IntNBitTableBatchedEmbeddingBagsCodegen); raises where fbgemm_gpu does not import."""
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (BoundsCheckMode, EmbeddingLocation,
                                                                      PoolingMode)
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

    return SparseType, BoundsCheckMode, EmbeddingLocation, PoolingMode, IntNBitTableBatchedEmbeddingBagsCodegen


def make_tbe(shapes: list[tuple[int, int]], dtype: str, device):
    """A TBE inference module over tables of shapes [(rows, dim)] stored as dtype (one of DTYPES),
    filled with random rows. Returns (module, per-table (weights, scale_shift) views to write rows
    into; scale_shift is None but for int8/int4). ValueError for another dtype."""
    SparseType, BoundsCheckMode, EmbeddingLocation, PoolingMode, IntNBitTableBatchedEmbeddingBagsCodegen = import_tbe()
    sparse = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8,
              "int4": SparseType.INT4}.get(dtype)
    if sparse is None:
        raise ValueError(f"no FBGEMM TBE storage for {dtype}")
    tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(f"t{t}", rows, dim, sparse, EmbeddingLocation.DEVICE) for t, (rows, dim) in enumerate(shapes)],
        pooling_mode=PoolingMode.SUM, bounds_check_mode=BoundsCheckMode.NONE, device=device,
        output_dtype=SparseType.FP32)
    tbe.fill_random_weights()
    return tbe, tbe.split_embedding_weights(split_scale_shifts=True)


def write_rows(weights, values) -> None:
    """Writes fp32/fp16 rows values [rows, dim] into a table's TBE weights (bytes or typed, rows
    possibly padded)."""
    import torch

    if weights.dtype == torch.uint8:
        raw = values.contiguous().view(torch.uint8)
        weights[:, :raw.shape[1]].copy_(raw)
    else:
        weights[:, :values.shape[1]].copy_(values.to(weights.dtype))


def write_int8_rows(weights, scale_shift, codes, scale_bias) -> None:
    """Writes int8 (or int4) rows into a table's TBE weights: codes uint8 [rows, dim] (int4: the
    packed bytes [rows, dim / 2], ``pack_int4_codes``), scale_bias fp16 [rows, 2] (scale, bias:
    value = scale * code + bias)."""
    import torch

    weights[:, :codes.shape[1]].copy_(codes)
    scale_shift.copy_(scale_bias.contiguous().view(torch.uint8).reshape(scale_shift.shape))


def quantize_fp16_rowwise(rows, levels: int = 255):
    """FBGEMM-style row-wise quantization of fp32 rows [rows, dim]: (codes uint8 [rows, dim], one per
    column, scale_bias fp16 [rows, 2]) with scale = (max - min) / levels (255: int8, 15: int4) and
    bias = min per row."""
    import torch

    lo, hi = rows.amin(1), rows.amax(1)
    scale = ((hi - lo) / float(levels)).clamp_min(1e-12).half()
    bias = lo.half()
    codes = torch.clamp(torch.round((rows - bias.float()[:, None]) / scale.float()[:, None]), 0, levels)
    return codes.to(torch.uint8), torch.stack([scale, bias], 1)


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


@functools.lru_cache(maxsize=None)
def int4_nibble_positions(device_str: str = "cuda", dim: int = 32) -> tuple[int, ...]:
    """Where FBGEMM's INT4 inference kernel reads the 8 columns of each 32-bit word of a row's codes:
    positions[k] = the nibble (0 = bits 0..3) holding column 8w + k. Measured, not assumed: one row
    whose nibble p of every word holds code p + 1 (scale 1, bias 0) is looked up once, and the
    output's column k is then positions[k] + 1. (Our rows: column k in nibble k, see int4_rows.h.)"""
    import torch

    device = torch.device(device_str)
    tbe, splits = make_tbe([(1, dim)], "int4", device)
    w, ss = splits[0]
    word = sum((p + 1) << (4 * p) for p in range(8))
    row = torch.tensor([_signed32(word)] * (dim // 8), dtype=torch.int32).view(torch.uint8)
    w[0, :dim // 2].copy_(row.to(device))
    ss.copy_(torch.tensor([1.0, 0.0], dtype=torch.float16).view(torch.uint8).reshape(ss.shape).to(device))
    out = tbe.forward(torch.zeros(1, dtype=torch.int32, device=device), torch.tensor([0, 1], dtype=torch.int32,
                                                                                       device=device))
    vals = out[0, :8].round().to(torch.int64).cpu().tolist()
    if sorted(vals) != list(range(1, 9)) or out[0].round().to(torch.int64).cpu().tolist() != vals * (dim // 8):
        raise RuntimeError(f"could not read FBGEMM's int4 nibble order (probe output {out[0].tolist()})")
    return tuple(v - 1 for v in vals)


def pack_int4_codes(codes, positions) -> "torch.Tensor":
    """Codes uint8 [rows, dim] (0..15, dim % 8 == 0) -> bytes [rows, dim / 2] with column 8w + k in
    nibble positions[k] of little-endian word w."""
    import torch

    rows, dim = codes.shape
    c = codes.to(torch.int64).reshape(rows, dim // 8, 8)
    words = torch.zeros(rows, dim // 8, dtype=torch.int64, device=codes.device)
    for k, p in enumerate(positions):
        words |= c[:, :, k] << (4 * p)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # int32 range, same bits
    return words.to(torch.int32).view(torch.uint8).reshape(rows, dim // 2)


def unpack_int4_codes(packed, dim: int, positions=tuple(range(8))) -> "torch.Tensor":
    """Inverse of pack_int4_codes: bytes [rows, >= dim / 2] -> codes uint8 [rows, dim]."""
    import torch

    rows = packed.shape[0]
    words = packed[:, :dim // 2].contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    cols = [(words >> (4 * p)) & 0xF for p in positions]
    return torch.stack(cols, dim=2).reshape(rows, dim).to(torch.uint8)


class TBEModel:
    """DLRM forward with FBGEMM's inference TBE for the embeddings (the dense part is the model's),
    its tables copied from the model's (int8/int4: quantized with an fp16 scale and bias per row)."""

    def __init__(self, model, dtype: str, device):
        import torch

        self.model = model
        self.dim = model.config.dim
        self.tbe, splits = make_tbe([(eb.num_embeddings, eb.embedding_dim) for eb in model.embeddings], dtype,
                                    device)
        for eb, (w, scale_shift) in zip(model.embeddings, splits):
            src = eb.weight.detach().to(device)
            if dtype == "int8":
                write_int8_rows(w, scale_shift, *quantize_fp16_rowwise(src))
            elif dtype == "int4":
                codes, sb = quantize_fp16_rowwise(src, LEVELS["int4"])
                write_int8_rows(w, scale_shift, pack_int4_codes(codes, int4_nibble_positions(str(device))), sb)
            else:
                write_rows(w, src.to(torch.float32 if dtype == "fp32" else torch.float16))

    def __call__(self, dense, indices, offsets):
        x = self.model.bottom(dense)
        pooled = self.tbe(indices, offsets).split(self.dim, dim=1)
        return self.model.top(self.model.interact(x, list(pooled)))


def tbe_inputs(indices, offsets, device):
    """Concatenated int32 ids and table-major offsets with a final end entry (T*B+1), TBE's form."""
    import torch

    ids = torch.cat([i.to(torch.int32) for i in indices]).to(device)
    starts, base = [], 0
    for i, o in zip(indices, offsets):
        starts.append(o.to(torch.int64) + base)
        base += i.numel()
    off = torch.cat([s.to(device) for s in starts] + [torch.tensor([base], device=device)]).to(torch.int32)
    return ids, off
