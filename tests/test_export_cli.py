"""``dlrm-deploy export`` and the torch op path of the swapped model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dlrm_deploy import cli
from dlrm_deploy import contract as C
from dlrm_deploy.export import DLRM, make_inputs, swap_embedding_bags


def test_export_cli(tmp_path, capsys):
    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(str(i % 50) for i in range(2000)) + "\n")
    out = tmp_path / "m.onnx"
    rc = cli.main(["export", "--config", "small", "--out", str(out), "--dtype", "fp16", "--variant", "prefetch",
                   "--hot-rows-from", str(trace), "--batch", "4"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "wrote" in text and "pinned rows per table" in text
    m = onnx.load(str(out))
    nodes = [n for n in m.graph.node if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]
    assert len(nodes) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["variant"] == b"prefetch" and attrs["dtype"] == b"fp16" and attrs["hot_first"] == 1
    assert 0 < attrs["pinned_rows"] <= 50
    assert [o.name for o in m.graph.output] == ["probability"]


def test_export_cli_per_table(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    assert cli.main(["export", "--config", "small", "--out", str(out), "--no-table-batching", "--dtype", "int8"]) == 0
    m = onnx.load(str(out))
    assert sum(n.domain == C.DOMAIN and n.op_type == C.OP_TYPE for n in m.graph.node) == 4


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_swapped_model_runs_the_torch_op(dtype):
    """The swapped model in PyTorch (our op on the CPU reference) matches nn.EmbeddingBag."""
    try:
        from dlrm_deploy.runtime import _core

        _core.lib()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"core library not available: {e}")
    model = DLRM("small", seed=0).eval()
    x = make_inputs("small", 6, pooling="var:5", seed=1, source="zipf:1.1")
    swapped = swap_embedding_bags(model, dtype=dtype)
    with torch.no_grad():
        want, got = model(*x).numpy(), swapped(*x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5 if dtype == "fp32" else 1e-2)
