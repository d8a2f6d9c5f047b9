"""FBGEMM's table-batched embedding inference (``IntNBitTableBatchedEmbeddingBagsCodegen``), set up
once for every benchmark: the module over given tables, rows written into it, and a DLRM forward
that uses it for the embeddings.

The benchmarks' baseline configuration: tables on the device, sum pooling, fp32 output, bounds
checks off. FBGEMM's int8 rows carry an fp16 scale and bias (ours: fp32), so its outputs are
judged against their own dequantized values. Imports fbgemm_gpu when called (an ImportError says
it is not installed).
"""

from __future__ import annotations


DTYPES = ("fp32", "fp16", "int8")  # table storage FBGEMM's inference TBE has (no bf16)


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
    into; scale_shift is None but for int8). ValueError for another dtype."""
    SparseType, BoundsCheckMode, EmbeddingLocation, PoolingMode, IntNBitTableBatchedEmbeddingBagsCodegen = import_tbe()
    sparse = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8}.get(dtype)
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
    """Writes int8 rows into a table's TBE weights: codes uint8 [rows, dim], scale_bias fp16
    [rows, 2] (scale, bias: value = scale * code + bias)."""
    import torch

    weights[:, :codes.shape[1]].copy_(codes)
    scale_shift.copy_(scale_bias.contiguous().view(torch.uint8).reshape(scale_shift.shape))


def quantize_fp16_rowwise(rows):
    """FBGEMM-style int8 row-wise quantization of fp32 rows [rows, dim]: (codes uint8, scale_bias
    fp16 [rows, 2]) with scale = (max - min) / 255 and bias = min per row."""
    import torch

    lo, hi = rows.amin(1), rows.amax(1)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12).half()
    bias = lo.half()
    codes = torch.clamp(torch.round((rows - bias.float()[:, None]) / scale.float()[:, None]), 0, 255)
    return codes.to(torch.uint8), torch.stack([scale, bias], 1)


class TBEModel:
    """DLRM forward with FBGEMM's inference TBE for the embeddings (the dense part is the model's),
    its tables copied from the model's (int8: quantized with an fp16 scale and bias per row)."""

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
