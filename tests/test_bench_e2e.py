"""``dlrm-deploy bench e2e`` on the CPU: JSON fields, the stock row's budget, GPU-only rows skipped
with a reason, and the CUDA-graph / torch.compile rows' code run against stand-ins for CUDA."""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import onnx
import pytest
import torch
import torch.nn.functional as F

from dlrm_deploy import cli
from dlrm_deploy.runtime import bench_e2e, bench_memory, bench_torch, timing


def test_cli_tiny_cpu(tmp_path, capsys):
    """One small run covers the JSON fields, the budget of the stock row and the hot-row probe."""
    out = tmp_path / "e2e.json"
    t0 = time.perf_counter()
    rc = cli.main(["bench", "e2e", "--config", "small", "--device", "cpu", "--batch", "16", "--runs", "3",
                   "--warmup", "1", "--variants", "auto", "--indices", "zipf:1.05", "--hot-rows", "auto",
                   "--hot-probe-runs", "2", "--stock-budget", "0.5", "--json", str(out),
                   "--workdir", str(tmp_path / "work")])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["rows"]}

    stock = rows["ORT CPU, stock export (fp32)"]
    assert stock["skipped"].startswith("timed out after"), stock
    assert stock["extra"]["timed_out"] and stock["extra"]["budget_s"] == 0.5
    assert time.perf_counter() - t0 < 120  # the stock export alone takes longer than the budget

    gpu_rows = [r for r in res["rows"] if r["backend"].startswith("torch+")]
    assert {r["backend"] for r in gpu_rows} == {"torch+fbgemm", "torch+fbgemm+cudagraph", "torch+fbgemm+compile",
                                                "torch+cudagraph"}
    for r in gpu_rows:
        assert "needs CUDA" in r["skipped"] and r["median_ms"] is None
        assert f"{r['name']}: skipped (needs CUDA" in text

    ours = rows["ORT CPU + dlrm_deploy op (fp32, auto)"]
    assert ours["ok"] and ours["median_ms"] > 0
    assert res["summary"]["best_pytorch"] == "PyTorch eager (nn.EmbeddingBag fp32)"
    assert res["summary"]["ours"]["name"] == ours["name"]
    assert res["summary"]["ours"]["speedup_vs_best_pytorch"] == pytest.approx(ours["speedup_vs_best_torch"])
    assert "the best PyTorch row (PyTorch eager" in text

    hot = res["hot_rows"]
    assert hot["mode"] == "auto" and hot["chosen"] in ("on", "off")
    assert hot["on_ms"] > 0 and hot["off_ms"] > 0
    assert hot["chosen"] == ("on" if hot["on_ms"] < hot["off_ms"] else "off")
    assert ours["extra"]["hot_rows"] == hot["chosen"] and "hot rows auto: timed probe" in text

    mem = res["memory"]
    assert mem["table_bytes"] > 0 and mem["model_table_bytes_fp32"] == (1000 + 2000 + 3000 + 4000) * 16 * 4
    assert mem["export"]["peak_rss"] >= mem["export"]["rss_model_built"] > 0
    assert mem["export"]["peak_x_table_bytes"] > 0
    assert mem["session"]["increment"] >= 0 and "increment_x_table_bytes" in mem["session"]
    assert "skipped" in mem["gpu"]
    assert "export peak host RSS" in text and "ORT session creation" in text and "GPU memory of a session: skipped" \
        in text
    assert res["config"]["graph_runs"] == 50 and res["config"]["stock_budget_s"] == 0.5
    assert res["config"]["ids"] == "int32"
    assert _id_types(tmp_path / "work") == {onnx.TensorProto.INT32}  # our export takes what every row is fed


def _id_types(workdir) -> set:
    """The element types of the ids/offsets inputs of the ONNX files bench e2e exported into workdir."""
    files = [f for f in workdir.glob("*.onnx") if f.name != "stock.onnx"]
    assert files
    return {i.type.tensor_type.elem_type for f in files for i in onnx.load(f, load_external_data=False).graph.input
            if i.name.startswith(("indices", "offsets"))}


def test_cli_int64_ids(tmp_path):
    out = tmp_path / "e2e.json"
    rc = cli.main(["bench", "e2e", "--config", "small", "--device", "cpu", "--batch", "16", "--runs", "3",
                   "--warmup", "1", "--variants", "auto", "--no-stock", "--ids", "int64", "--json", str(out),
                   "--workdir", str(tmp_path / "work")])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["config"]["ids"] == "int64" and res["summary"]["ours"]["speedup_vs_best_pytorch"] > 0
    assert _id_types(tmp_path / "work") == {onnx.TensorProto.INT64}


def test_hot_rows_default_is_off():
    p = argparse.ArgumentParser()
    bench_e2e.add_arguments(p)
    a = p.parse_args([])
    assert a.hot_rows == "off" and a.stock_budget == 120.0


def test_deadline_interrupts():
    with pytest.raises(timing.BudgetExceeded):
        with timing.deadline(0.2):
            while True:
                time.sleep(0.01)
    with timing.deadline(5):
        pass  # no alarm left behind
    time.sleep(0.05)


def test_host_peak_sees_a_temporary_allocation():
    _, mem = bench_memory.host_peak(lambda: bytearray(64 << 20)[-1])
    assert mem["peak"] >= mem["rss_before"]
    if mem["method"] == "VmHWM":
        assert mem["increment"] >= 48 << 20


# ------------------------------------------------------------------------------------------------
# The CUDA-only rows' code against stand-ins: CUDA calls are replaced by CPU ones, a "graph" keeps
# the output computed at capture (so the check is meaningful on the check inputs) and FBGEMM's TBE
# by the model's own EmbeddingBags over TBE-form inputs.


class _Event:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


class _Stream:
    def wait_stream(self, other):
        pass


class _Graph:
    replays = 0

    def replay(self):
        _Graph.replays += 1


class _TBE:
    def __init__(self, model, dtype, device):
        self.model = model

    def __call__(self, dense, ids, offs):
        b = dense.shape[0]
        pooled = []
        for t, eb in enumerate(self.model.embeddings):
            o = offs[t * b:(t + 1) * b + 1].long()
            pooled.append(F.embedding_bag(ids[int(o[0]):int(o[-1])].long(), eb.weight, o[:-1] - o[0], mode="sum"))
        return self.model.top(self.model.interact(self.model.bottom(dense), pooled))


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", lambda g, **kw: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench_torch, "TBEModel", _TBE)


def _bench(*extra):
    p = argparse.ArgumentParser()
    bench_e2e.add_arguments(p)
    args = p.parse_args(["--config", "small", "--device", "cpu", "--batch", "8", "--runs", "3", "--warmup", "1",
                         "--graph-runs", "4", *extra])
    b = bench_e2e._setup(args)
    b.device = "cuda"  # the CUDA code paths, on CPU tensors (b.tdev stays the CPU)
    return b


@pytest.mark.parametrize("pooling", ["4", "var:3"])
def test_gpu_rows_with_stand_ins(fake_cuda, monkeypatch, pooling):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    b = _bench("--pooling", pooling)
    eager = bench_e2e.eager_reference(b)
    rows = {r.backend: r for r in bench_e2e.torch_rows(b)}
    assert set(rows) == {"torch+fbgemm", "torch+fbgemm+cudagraph", "torch+fbgemm+compile", "torch+cudagraph"}
    for r in rows.values():
        assert not r.skipped, r
        assert r.ok and r.max_abs_err <= 1e-5 and r.median_ms > 0, r
    for key in ("torch+fbgemm+cudagraph", "torch+cudagraph"):
        assert rows[key].runs == 4
        if pooling == "4":  # same shapes: timing inputs copied into the static ones, check inputs again after
            assert rows[key].extra["recheck_max_abs_err"] <= 1e-5
        else:  # other id counts: captured again for timing
            assert rows[key].extra["captures"] == 2
    assert "compile_s" in rows["torch+fbgemm+compile"].extra
    summary = bench_e2e.summarize([eager, *rows.values()], eager)
    best = min(rows.values(), key=lambda r: r.median_ms)
    assert summary["best_pytorch"] in (best.name, eager.name) and summary["ours"] is None


def test_gpu_rows_wrong_output_not_timed(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(_TBE, "__call__", lambda self, d, i, o: torch.zeros(d.shape[0], 1))
    b = _bench("--no-compile")
    bench_e2e.eager_reference(b)
    rows = {r.backend: r for r in bench_e2e.torch_rows(b)}
    assert "torch+fbgemm+compile" not in rows
    for key in ("torch+fbgemm", "torch+fbgemm+cudagraph"):
        assert rows[key].ok is False and rows[key].median_ms is None and "differs" in rows[key].note
    assert rows["torch+cudagraph"].ok


def test_compile_row_over_budget(fake_cuda, monkeypatch):
    def slow_compile(fn, **kw):
        def run(*a):
            time.sleep(0.1)  # a compile that never ends within the budget
            return fn(*a)
        return run

    monkeypatch.setattr(torch, "compile", slow_compile)
    b = _bench("--no-cuda-graphs", "--compile-budget", "0.15")
    bench_e2e.eager_reference(b)
    rows = {r.backend: r for r in bench_e2e.torch_rows(b)}
    assert "budget" in rows["torch+fbgemm+compile"].skipped and rows["torch+fbgemm+compile"].median_ms is None
    assert rows["torch+fbgemm"].ok


def test_gpu_rows_fbgemm_missing(fake_cuda, monkeypatch):
    def missing(*a, **kw):
        raise ImportError("No module named 'fbgemm_gpu'")

    monkeypatch.setattr(bench_torch, "TBEModel", missing)
    b = _bench("--no-compile")
    bench_e2e.eager_reference(b)
    rows = {r.backend: r for r in bench_e2e.torch_rows(b)}
    assert "fbgemm_gpu" in rows["torch+fbgemm"].skipped and "fbgemm_gpu" in rows["torch+fbgemm+cudagraph"].skipped
    assert rows["torch+cudagraph"].ok  # plain PyTorch's graph row does not need FBGEMM


def test_int32_ids_refuse_tables_they_cannot_index():
    """An id past int32 would wrap around silently: refused in one line, before any table is built."""
    from dlrm_deploy.export.dlrm import make_indices

    with pytest.raises(SystemExit, match=r"--ids int32: tables of 3000000000 rows need int64 ids"):
        cli.main(["bench", "e2e", "--config", "small", "--rows", "3000000000", "--device", "cpu"])
    with pytest.raises(ValueError, match="needs ids wider than torch.int32"):
        make_indices([2**31 + 1], 2, pooling=1, index_dtype=torch.int32)
    ids, offsets = make_indices([2**31], 3, pooling=2, index_dtype=torch.int32)  # ids up to 2**31 - 1 fit
    assert ids[0].dtype == torch.int32 and int(ids[0].min()) >= 0 and offsets[0].tolist() == [0, 2, 4]
