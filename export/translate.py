"""Translation torch -> ONNX: the op's ONNX translation and the dynamo export that uses it.

``trace`` exports a swapped model (see ``swap.py``) with torch.onnx's dynamo exporter; the custom
translation turns each ``torch.ops.dlrm_deploy.embedding_bag`` call into one
``dlrm_deploy::EmbeddingBag`` node (one node per table; table batching fuses them later).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn

from dlrm_deploy import contract as C

from .external_data import HELD_LOCATION, HeldTables
from .model_inputs import default_dynamic_shapes, pin_specialised_dims
from .swap import torch_op


def _translate(weight, indices, offsets, per_sample_weights=None, table_rows=(), dim=0, dtype="fp32",
               out_dtype="fp32", mode="sum", include_last_offset=0, variant="auto", prefetch_distance=0,
               pinned_rows=0, hot_first=0, check="checked", overlap=0, split_scales=0):
    """ONNX translation of the torch op: one dlrm_deploy::EmbeddingBag node."""
    import onnxscript

    op = onnxscript.values.Opset(C.DOMAIN, C.OP_VERSION)
    inputs = [weight, indices, offsets] + ([per_sample_weights] if per_sample_weights is not None else [])
    return op.EmbeddingBag(*inputs, table_rows=[int(r) for r in table_rows], dim=int(dim), dtype=dtype,
                           out_dtype=out_dtype, mode=mode, include_last_offset=int(include_last_offset),
                           variant=variant, prefetch_distance=int(prefetch_distance),
                           pinned_rows=int(pinned_rows), hot_first=int(hot_first), check=check, overlap=int(overlap),
                           split_scales=int(split_scales))


def _rows_array(tensor):
    """A zero-copy numpy view of an exported initializer's data (torch tensors viewed as bytes, so
    bfloat16 needs no numpy type); None where there is no such view."""
    raw = getattr(tensor, "raw", None)
    if isinstance(raw, torch.Tensor) and raw.device.type == "cpu":
        return raw.detach().contiguous().view(torch.uint8).numpy()
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).view(np.uint8)
    return None


def _deferred_maker(tensor, name: str, deferred: dict):
    """The make() of a placeholder table (see swap_embedding_bags' deferred), or None for a real one.
    Raises RuntimeError when a deferred module's table reaches the graph as another tensor than its
    placeholder (a copy: its bytes would be garbage)."""
    raw = getattr(tensor, "raw", None)
    entry = deferred.get(raw.data_ptr()) if isinstance(raw, torch.Tensor) else None
    if entry is None and any(name == f"{module}.weight" for module, _t, _m in deferred.values()):
        raise RuntimeError(f"export: the exporter copied the placeholder of table '{name}'; export with the "
                           "tables already in their storage form")
    if entry is None:
        return None
    make = entry[2]
    return lambda: make().contiguous().view(torch.uint8).numpy()


def _serialize_holding_tables(ir_model, deferred: dict | None = None) -> tuple[onnx.ModelProto, HeldTables]:
    """The proto of the exported IR model with every op table's data left out (see HeldTables): the
    usual serialisation copies each initializer into the proto, transiently twice, which made the
    export's memory peak about 2x the tables on top of the model. Placeholder tables (deferred) are
    held as the functions that make them."""
    held = HeldTables()
    saved = []
    for node in ir_model.graph:
        if node.domain != C.DOMAIN or node.op_type != C.OP_TYPE or not node.inputs or node.inputs[0] is None:
            continue
        value = node.inputs[0]
        tensor = value.const_value
        if tensor is None or value.name in held:
            continue
        maker = _deferred_maker(tensor, value.name, deferred or {})
        rows = maker if maker is not None else _rows_array(tensor)
        if rows is None:
            continue
        held[value.name] = rows
        saved.append((value, tensor))
        # serialised as a reference to HELD_LOCATION: type, dims and length, no data
        value.const_value = ir.ExternalTensor(HELD_LOCATION, None, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                              name=value.name)
    try:
        proto = ir.serde.serialize_model(ir_model)
    finally:
        for value, tensor in saved:
            value.const_value = tensor
    return proto, held


def trace(swapped: nn.Module, example_inputs: tuple, *, opset: int, input_names, output_names,
          dynamic_shapes, deferred: dict | None = None) -> tuple[onnx.ModelProto, HeldTables]:
    """torch.onnx (dynamo) export of the swapped model: one op node per table, and the op tables held
    out of the proto (see HeldTables). dynamic_shapes None: every dimension ``Dim.AUTO`` (see
    ``default_dynamic_shapes``); dimensions torch.export specialised are written as fixed values.
    deferred: the placeholder tables of ``swap_embedding_bags(..., deferred=...)``."""
    if dynamic_shapes is None:
        dynamic_shapes = default_dynamic_shapes(example_inputs)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                swapped, tuple(example_inputs), dynamo=True, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_shapes=dynamic_shapes,
                custom_translation_table={torch_op().default: _translate}, optimize=True, verbose=False)
            proto, held = _serialize_holding_tables(program.model, deferred)
            exported = getattr(program, "exported_program", None)
            pin_specialised_dims(proto, getattr(exported, "range_constraints", None))
        del program, exported
    finally:
        quiet.setLevel(level)
    return proto, held
