"""dlrm_deploy.export: a PyTorch DLRM, its inputs, and the ONNX export that swaps every
``nn.EmbeddingBag`` of a model for the ``dlrm_deploy::EmbeddingBag`` op (table batching, table dtype
conversion and int8 / int4 row-wise quantization, hot-row profiling and reordering)."""

from __future__ import annotations

from .dlrm import (CONFIGS, DLRM, DLRMConfig, get_config, make_indices, make_inputs,  # noqa: F401
                   parse_index_source, read_trace)
from .batching import batch_tables  # noqa: F401
from .onnx_export import ExportInfo, TableInfo, export_onnx  # noqa: F401
from .swap import DeployEmbeddingBag, swap_embedding_bags  # noqa: F401
from .onnx_schema import build_onnx_schema, register_onnx_schema  # noqa: F401
from .tables import (DEFAULT_HOT_COVERAGE, DEFAULT_L2_BUDGET_BYTES, HotRowPlan, choose_pinned_rows,  # noqa: F401
                     convert_table, count_rows, dequantize_int4_rowwise, dequantize_int8_rowwise, order_by_counts,
                     hot_coverage, pack_tables, plan_hot_rows, profile_hot_rows, quantize_int4_rowwise,
                     quantize_int8_rowwise, storage_row_bytes)

__all__ = [
    "CONFIGS", "DLRM", "DLRMConfig", "get_config", "make_indices", "make_inputs", "parse_index_source", "read_trace",
    "DeployEmbeddingBag", "ExportInfo", "TableInfo", "batch_tables", "export_onnx", "swap_embedding_bags",
    "build_onnx_schema", "register_onnx_schema",
    "DEFAULT_HOT_COVERAGE", "DEFAULT_L2_BUDGET_BYTES", "HotRowPlan", "choose_pinned_rows", "convert_table",
    "count_rows", "dequantize_int4_rowwise", "dequantize_int8_rowwise", "order_by_counts", "hot_coverage",
    "pack_tables", "plan_hot_rows", "profile_hot_rows", "quantize_int4_rowwise", "quantize_int8_rowwise",
    "storage_row_bytes",
]
