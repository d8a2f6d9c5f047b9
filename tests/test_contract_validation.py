"""Validation once, in the core: attribute values the core rejects fail at export, with the very
message ONNX Runtime gives when it loads such a node (issue 11)."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from dlrm_deploy import contract
from dlrm_deploy.export import export_onnx
from dlrm_deploy.runtime import _core

ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from dlrm_deploy.export.onnx_graph import attrs_of  # noqa: E402
from dlrm_deploy.runtime import ort as dd_ort  # noqa: E402

ROWS, DIM = 10, 8


class Bags(nn.Module):
    """n tables of ROWS rows and dim columns over the same ids."""

    def __init__(self, n: int, dim: int = DIM):
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(ROWS, dim, mode="sum") for _ in range(n))

    def forward(self, indices, offsets):
        return torch.cat([b(indices, offsets) for b in self.bags], dim=1)


def _example():
    return torch.tensor([1, 2, 3, 9], dtype=torch.int64), torch.tensor([0, 2], dtype=torch.int64)


def _core_message(attrs: dict) -> str:
    with pytest.raises(_core.CoreError) as e:
        _core.make_config(attrs)
    return str(e.value)


def _ort_message(attrs: dict, dtype: str = "fp32") -> str:
    """The message of ONNX Runtime's session creation for one node with attrs."""
    elem = contract.DTYPE_INFO[dtype].onnx
    inputs = [helper.make_tensor_value_info("weights", elem, None),
              helper.make_tensor_value_info("indices", TensorProto.INT64, None),
              helper.make_tensor_value_info("offsets", TensorProto.INT64, None)]
    node = helper.make_node(contract.OP_TYPE, ["weights", "indices", "offsets"], ["out"], domain=contract.DOMAIN,
                            **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.register_custom_ops_library(dd_ort.custom_op_library())
    so.log_severity_level = 4
    with pytest.raises(Exception) as e:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return str(e.value)


CASES = {  # what export_onnx is asked for, and the attributes of the node it would write
    "300_tables": (dict(n=300), {}, dict(table_rows=[ROWS] * 300, dim=DIM)),
    "int8_dim_6": (dict(n=1, dim=6), dict(dtype="int8"), dict(table_rows=[ROWS], dim=6, dtype="int8")),
    "int4_dim_12": (dict(n=1, dim=12), dict(dtype="int4"), dict(table_rows=[ROWS], dim=12, dtype="int4")),
    "prefetch_100": (dict(n=1), dict(prefetch_distance=100), dict(table_rows=[ROWS], dim=DIM, prefetch_distance=100)),
    "prefetch_12": (dict(n=1), dict(prefetch_distance=12), dict(table_rows=[ROWS], dim=DIM, prefetch_distance=12)),
    "pinned_over_rows": (dict(n=2), dict(pinned_rows=ROWS + 5),
                         dict(table_rows=[ROWS, ROWS], dim=DIM, pinned_rows=ROWS + 5, hot_first=1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_attributes_fail_at_export_with_the_core_message(tmp_path, case):
    model_kw, export_kw, node_attrs = CASES[case]
    message = _core_message(node_attrs)
    assert message in _ort_message(node_attrs, node_attrs.get("dtype", "fp32"))
    with pytest.raises(ValueError) as e:
        export_onnx(Bags(**model_kw).eval(), _example(), tmp_path / "m.onnx", **export_kw)
    assert message in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_include_last_offset_7_fails_where_export_reads_nodes():
    """A node written by hand (or by a translation) is read back through the core's validator."""
    attrs = dict(table_rows=[ROWS], dim=DIM, include_last_offset=7)
    message = _core_message(attrs)
    assert message == "include_last_offset must be 0 or 1, got 7"
    assert message in _ort_message(attrs)
    node = helper.make_node(contract.OP_TYPE, ["w", "i", "o"], ["out"], domain=contract.DOMAIN, **attrs)
    with pytest.raises(ValueError, match=message):
        attrs_of(node)
    with pytest.raises(ValueError, match=message):
        contract.validate_attributes(attrs)


def test_validate_attributes_fills_defaults_and_accepts_the_compiled_prefetch_distances():
    for pd in contract.PREFETCH_DISTANCES:
        a = contract.validate_attributes(dict(table_rows=[ROWS], dim=DIM, prefetch_distance=pd))
        assert a["prefetch_distance"] == pd and a["check"] == "checked" and a["hot_first"] == 0


def test_generated_ctypes_mirror_matches_the_core():
    cfg = _core.make_config(dict(table_rows=[3, 4], dim=8, dtype="bf16", variant="combined", check="deferred"))
    assert (cfg.num_tables, cfg.dim, list(cfg.table_rows[:2])) == (2, 8, [3, 4])
    assert cfg.dtype == contract.DTYPE_INFO["bf16"].enum
    assert cfg.variant == contract.VARIANTS.index("combined") and cfg.check == contract.CHECKS.index("deferred")
    assert _core.row_bytes(cfg) == contract.row_bytes("bf16", 8)
    for dtype in contract.DTYPES:
        for dim in (4, 8, 12, 24, 124, 128):
            if dim % contract.ROWWISE_DIM_MULTIPLE.get(dtype, 1):
                continue
            c = _core.make_config(dict(table_rows=[1], dim=dim, dtype=dtype))
            assert _core.row_bytes(c) == contract.row_bytes(dtype, dim), (dtype, dim)
    assert onnx.TensorProto.BFLOAT16 == contract.DTYPE_INFO["bf16"].onnx
    assert onnx.TensorProto.FLOAT16 == contract.DTYPE_INFO["fp16"].onnx
