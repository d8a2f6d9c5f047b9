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
- converts TorchRec's quantized EmbeddingBagCollection (FBGEMM int8/fp16 rows, no nn.EmbeddingBag)
  into a float one whose tables carry FBGEMM's rows in our storage form (int8 rows exactly: codes,
  scale, bias), and refuses the other quantized modules in one line.

torchrec is never imported here: a model that uses it has imported it already.
"""

from __future__ import annotations

import copy
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


STORED_ROWS = "dd_stored_rows"  # nn.EmbeddingBag attribute: {storage dtype: rows already in that form}


def _quant_table(name: str, dim: int, kind: str, weight: torch.Tensor, scale_shift) -> tuple[torch.Tensor, dict]:
    """One FBGEMM inference table -> (float32 [rows, dim] values, {storage dtype: our stored rows}).

    int8 rows (dim uint8 codes, then fp16 scale and fp16 bias) become our row-wise int8 rows exactly
    (codes, fp32 scale, fp32 bias, zero padding: ``dlrm_deploy.layout``); fp16 rows stay fp16."""
    from dlrm_deploy.contract import int8_row_bytes

    if kind == "int8":
        codes = weight[:, :dim].contiguous()
        scale_bias = scale_shift.contiguous().view(torch.float16).float()  # [rows, 2]: scale, bias
        values = codes.float() * scale_bias[:, :1] + scale_bias[:, 1:2]
        rows = torch.zeros((codes.shape[0], int8_row_bytes(dim)), dtype=torch.uint8)
        rows[:, :dim] = codes
        rows[:, dim:dim + 8] = scale_bias.contiguous().view(torch.uint8)
        return values, {"int8": rows}
    if kind == "fp16":
        half = weight.contiguous().view(torch.float16)[:, :dim].contiguous()
        return half.float(), {"fp16": half}
    if kind == "fp32":
        return weight.contiguous().view(torch.float32)[:, :dim].clone(), {}
    raise NotImplementedError(f"table '{name}' is stored as {kind} by FBGEMM, which dlrm_deploy cannot store: quantize "
                              "it to int8 or fp16 (torchrec quantize_embeddings(dtype=torch.qint8 or torch.half)), "
                              "or export the float model with export_onnx(..., dtype='int8' or 'int4') (FBGEMM's own "
                              "int4 rows are not converted)")


def _float_collection(qebc: nn.Module) -> nn.Module:
    """A torchrec EmbeddingBagCollection computing what the quantized qebc computes: its tables as
    nn.EmbeddingBag(include_last_offset=True) holding the dequantized values, each carrying its rows
    in FBGEMM's storage form (``STORED_ROWS``) so that the swap stores them unchanged."""
    from torchrec import EmbeddingBagCollection

    if getattr(qebc, "_output_dtype", torch.float32) != torch.float32:
        raise NotImplementedError("quantized EmbeddingBagCollection with output_dtype "
                                  f"{qebc._output_dtype}: quantize it with output_dtype=torch.float (the default)")
    tables = {}
    for tbe in qebc._emb_modules:
        for spec, (weight, scale_shift) in zip(tbe.embedding_specs, tbe.split_embedding_weights()):
            name, _rows, dim, sparse_type = spec[:4]
            kind = str(getattr(sparse_type, "value", sparse_type)).lower()
            tables[name] = _quant_table(name, int(dim), kind, weight.detach().cpu(), scale_shift)
    configs = qebc.embedding_bag_configs()
    ebc = EmbeddingBagCollection(tables=configs, is_weighted=qebc.is_weighted(), device=torch.device("meta"))
    for cfg in configs:
        values, stored = tables[cfg.name]
        mode = str(getattr(cfg.pooling, "value", cfg.pooling)).lower()
        bag = nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim, mode=mode, include_last_offset=True,
                              _weight=values.contiguous())
        setattr(bag, STORED_ROWS, stored)
        ebc.embedding_bags[cfg.name] = bag
    return ebc


def dequantize_collections(model: nn.Module) -> nn.Module:
    """model, or a copy of it with every ``torchrec.quant.EmbeddingBagCollection`` (FBGEMM int8,
    fp16 or fp32 rows) replaced by an equivalent float EmbeddingBagCollection (see
    ``_float_collection``); the user's model is not modified. Other quantized embedding modules are
    refused by ``check_quantized``."""
    quant = sys.modules.get("torchrec.quant.embedding_modules")
    qebc_type = getattr(quant, "EmbeddingBagCollection", None)
    if qebc_type is None:
        return model
    memo = {id(m): _float_collection(m) for _n, m in model.named_modules() if type(m) is qebc_type}
    if not memo:
        return model
    return memo[id(model)] if id(model) in memo else copy.deepcopy(model, memo)


def check_quantized(model: nn.Module) -> None:
    """Raises NotImplementedError (one line, saying what to do) when model holds quantized embedding
    modules that ``dequantize_collections`` does not convert (quantized EmbeddingCollection,
    feature-processed or managed-collision collections, bare FBGEMM inference TBEs)."""
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
                f"({type(m).__module__}.{type(m).__name__}) that dlrm_deploy cannot export (quantized "
                "EmbeddingBagCollections are converted; this kind is not): export the float model with "
                "export_onnx(..., dtype='int8' or 'fp16') (`dlrm-deploy export --dtype`), which stores row-wise int8 "
                "or fp16 tables itself")


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
