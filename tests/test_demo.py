"""The demo and the end-to-end benchmark's CPU smoke run (need the built ONNX Runtime op library)."""

from __future__ import annotations

import json

import pytest

from dlrm_deploy import cli


@pytest.fixture(scope="module")
def ort_library():
    try:
        from dlrm_deploy.runtime import ort

        return ort.custom_op_library()
    except Exception as e:  # noqa: BLE001 - not built here
        pytest.skip(f"ONNX Runtime custom-op library not available: {e}")


def test_demo_exits_zero(ort_library, capsys):
    rc = cli.main(["demo", "--device", "cpu", "--runs", "5", "--warmup", "1", "--batch", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max abs error" in out and "ONNX Runtime + dlrm_deploy op" in out


def test_demo_int8(ort_library, capsys):
    rc = cli.main(["demo", "--device", "cpu", "--runs", "3", "--warmup", "1", "--dtype", "int8", "--batch", "16"])
    assert rc == 0, capsys.readouterr().out


def test_bench_e2e_smoke(ort_library, tmp_path, capsys):
    out_json = tmp_path / "e2e.json"
    rc = cli.main(["bench", "e2e", "--config", "small", "--batch", "32", "--runs", "3", "--warmup", "1",
                   "--device", "cpu", "--variants", "auto,baseline", "--indices", "zipf:1.05", "--hot-rows", "on",
                   "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    # eager, stock, 2 variants, and skipped on the CPU: FBGEMM, FBGEMM and PyTorch in CUDA graphs, torch.compile
    assert len(rows) == 8
    for r in result["rows"]:
        if not r["skipped"]:
            assert r["ok"] and r["median_ms"] > 0 and r["runs"] == 3
    assert sum(not r["skipped"] for r in result["rows"]) >= 4
    assert (tmp_path / "e2e.png").stat().st_size > 0
    assert result["config"]["pinned_rows"] > 0
