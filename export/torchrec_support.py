"""TorchRec models in ``export_onnx``: KeyedJaggedTensor inputs and EmbeddingBagCollections.

An unsharded ``torchrec.EmbeddingBagCollection`` (alone or inside ``torchrec.models.dlrm.DLRM``)
holds one ``nn.EmbeddingBag(include_last_offset=True)`` per table, which the swap replaces like any
other; the collection splits the KeyedJaggedTensor per feature in the graph. This module
- rebuilds example KJTs from values, lengths and weights only (so the ONNX inputs are exactly
  those: the form Triton's ragged batching concatenates);
- maps each table module to the features it serves (a table shared by features is one module,
  stored once, called once per feature);
- describes each KJT input for the file's metadata (keys, rows per key, ONNX input names), so that
  tools can make valid inputs without the Python model;
- refuses TorchRec's quantized inference modules (FBGEMM rows, no nn.EmbeddingBag) in one line.

torchrec is never imported here: a model that uses it has imported it already.
"""

from __future__ import annotations

import sys

import torch
import torch.utils._pytree as pytree
from torch import nn


def _kjt_type():
    """torchrec's KeyedJaggedTensor class, or None when torchrec is not in use."""
    sparse = sys.modules.get("torchrec.sparse.jagged_tensor")
    return getattr(sparse, "KeyedJaggedTensor", None) if sparse is not None else None


def _is_kjt(x) -> bool:
    kjt = _kjt_type()
    return kjt is not None and isinstance(x, kjt)


def canonical_inputs(example_inputs) -> tuple:
    """example_inputs with every KeyedJaggedTensor rebuilt from its keys, values, lengths and
    weights (dropping cached offsets, strides and inverse indices: the ONNX inputs are then
    values, lengths and, for weighted features, weights). Other inputs are returned as they are."""
    kjt_type = _kjt_type()
    if kjt_type is None:
        return tuple(example_inputs)

    def rebuild(x):
        if not isinstance(x, kjt_type):
            return x
        if x.variable_stride_per_key():
            raise NotImplementedError("KeyedJaggedTensor inputs with a batch size per feature (variable stride) "
                                      "are not supported: give every key the same number of samples")
        return kjt_type(keys=x.keys(), values=x.values(), lengths=x.lengths(), weights=x.weights_or_none())

    return tuple(pytree.tree_map(rebuild, tuple(example_inputs), is_leaf=lambda x: isinstance(x, kjt_type)))


def check_quantized(model: nn.Module) -> None:
    """Raises NotImplementedError (one line, saying what to do) when model holds TorchRec's
    quantized embedding modules: their FBGEMM int8/int4/fp16 rows are not nn.EmbeddingBag tables."""
    quant = sys.modules.get("torchrec.quant.embedding_modules")
    tbe = sys.modules.get("fbgemm_gpu.split_table_batched_embeddings_ops_inference")
    kinds = tuple(c for c in (getattr(quant, "EmbeddingBagCollection", None), getattr(quant, "EmbeddingCollection", None),
                              getattr(tbe, "IntNBitTableBatchedEmbeddingBagsCodegen", None)) if c is not None)
    if not kinds:
        return
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            raise NotImplementedError(
                f"'{name or type(m).__name__}' is a TorchRec/FBGEMM quantized embedding module "
                f"({type(m).__module__}.{type(m).__name__}), which dlrm_deploy cannot export: export the float "
                "model (before torchrec.quant / quantize_embeddings) with export_onnx(..., dtype='int8' or 'fp16') "
                "(`dlrm-deploy export --dtype`), which stores row-wise int8 or fp16 tables itself")


def features_of_tables(model: nn.Module) -> dict[str, list[str]]:
    """{nn.EmbeddingBag module path: feature names it serves, in call order} for every TorchRec
    EmbeddingBagCollection in model (empty for models without one)."""
    out: dict[str, list[str]] = {}
    for prefix, m in model.named_modules():
        bags = getattr(m, "embedding_bags", None)
        configs = getattr(m, "embedding_bag_configs", None)
        if not isinstance(bags, nn.ModuleDict) or not callable(configs):
            continue
        for cfg in configs():
            if cfg.name in bags:
                out[f"{prefix}.embedding_bags.{cfg.name}" if prefix else f"embedding_bags.{cfg.name}"] = \
                    list(cfg.feature_names)
    return out


def kjt_inputs(example_inputs, input_names: list[str], rows_of_feature: dict[str, int]) -> list[dict]:
    """Descriptions of the KeyedJaggedTensor inputs for the file's metadata.

    example_inputs: as passed to the exporter (after ``canonical_inputs``); input_names: the ONNX
    graph's (non-initializer) input names, one per tensor in pytree order; rows_of_feature:
    {feature: table rows}. Each description: keys, rows per key (None where no table reads the
    key), the ONNX names of values, lengths and weights (None when unweighted), and the example's
    batch (samples per key)."""
    kjt_type = _kjt_type()
    if kjt_type is None:
        return []
    leaves = [x for x in pytree.tree_leaves(tuple(example_inputs)) if isinstance(x, torch.Tensor)]
    if len(leaves) != len(input_names):
        return []
    name_of = {id(t): n for t, n in zip(leaves, input_names)}
    kjts = [x for x in pytree.tree_leaves(tuple(example_inputs), is_leaf=lambda x: isinstance(x, kjt_type))
            if isinstance(x, kjt_type)]
    out = []
    for k in kjts:
        keys = list(k.keys())
        weights = k.weights_or_none()
        out.append({"keys": keys, "rows": [rows_of_feature.get(key) for key in keys],
                    "values": name_of.get(id(k.values())), "lengths": name_of.get(id(k.lengths())),
                    "weights": name_of.get(id(weights)) if weights is not None else None,
                    "batch": int(k.lengths().numel() // max(1, len(keys)))})
    return out
