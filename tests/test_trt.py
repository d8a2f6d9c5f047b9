"""TensorRT adapter: the plugin library (plugins/trt), its C++ harness (tests/trt_harness) and the
Python engine API (runtime/trt.py).

Without a TensorRT Python module the engine tests skip with the reason; without a GPU the harness
runs its host-side checks only (fields, types, shapes, serialization) and its GPU run is skipped."""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C

REPO = pathlib.Path(__file__).resolve().parent.parent


def _built(name: str, sub: str) -> pathlib.Path | None:
    try:
        from dlrm_deploy.runtime import library_dir

        path = library_dir().parent / sub / name
    except FileNotFoundError:
        return None
    return path if path.exists() else None


def _trt_reason():
    try:
        from dlrm_deploy.runtime.trt import trt_module

        trt_module()
    except ImportError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------------------------------
# Without TensorRT
# --------------------------------------------------------------------------------------------------

def test_trt_build_cli_parses():
    from dlrm_deploy.cli import build_parser

    argv = ["trt-build", "m.onnx", "--out", "m.plan", "--fp16", "--max-batch", "512", "--pooling", "4",
            "--shape", "indices=1:100:200"]
    args = build_parser(argv).parse_args(argv)
    assert args.max_batch == 512 and args.fp16 and args.out == "m.plan"
    assert args.shape == [("indices", ([1], [100], [200]))]


def test_missing_module_is_a_clear_error(monkeypatch):
    from dlrm_deploy.runtime import trt as T

    monkeypatch.setenv("DLRM_DEPLOY_TRT_MODULE", "no_such_tensorrt_module")
    monkeypatch.setattr(T, "_modules", {})
    with pytest.raises(ImportError, match="no_such_tensorrt_module"):
        T.trt_module()


def test_plugin_library_exports_only_trt_entry_points():
    lib = _built("libdlrm_deploy_trt.so", "lib")
    if lib is None:
        pytest.skip("libdlrm_deploy_trt.so not built (no TensorRT headers or no CUDA: see CMake's output)")
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
    if nm.returncode != 0:
        pytest.skip("nm not available")
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert {"getCreators", "setLoggerFinder"} <= exported
    assert not any(s.startswith("dd_") for s in exported), "the core's symbols must stay inside the plugin"
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in ldd and "tensorrt" not in ldd, ldd


def _harness():
    exe = _built("dd_trt_harness", "bin")
    if exe is None:
        pytest.skip("dd_trt_harness not built (no TensorRT headers or no CUDA: see CMake's output)")
    return exe


def test_harness_host_side():
    """Fields, types, shapes, serialization and clean failures, as TensorRT drives them (any machine)."""
    exe = _harness()
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.gpu
def test_harness_gpu():
    """Every enqueue against the CPU reference (fp32/fp16/int8/bf16 tables, sum/mean, deferred errors)."""
    exe = _harness()
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    assert "host-side only" not in r.stdout, "the harness saw no CUDA device"


# --------------------------------------------------------------------------------------------------
# Engines (need the `tensorrt` or `tensorrt_rtx_bindings` module and a GPU)
# --------------------------------------------------------------------------------------------------

requires_trt = pytest.mark.skipif(_trt_reason() is not None, reason=f"no TensorRT module: {_trt_reason()}")

TABLE_ROWS = [30, 50, 20]
DIM = 8


def _tiny_model(path, dtype="fp32", mode="sum", index_type=TensorProto.INT64, include_last_offset=0):
    """One EmbeddingBag node: packed weights (initializer), indices [N], offsets [O] -> [B, T*D]."""
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((sum(TABLE_ROWS), DIM)).astype(np.float32)
    if dtype == "fp32":
        w = w32
    elif dtype == "fp16":
        w = w32.astype(np.float16)
    else:
        from dlrm_deploy.export import quantize_int4_rowwise, quantize_int8_rowwise

        import torch

        quantize = quantize_int8_rowwise if dtype == "int8" else quantize_int4_rowwise
        w = quantize(torch.from_numpy(w32)).numpy()
    weights = numpy_helper.from_array(w, "weights")
    node = helper.make_node(C.OP_TYPE, ["weights", "indices", "offsets"], ["out"], domain=C.DOMAIN,
                            table_rows=TABLE_ROWS, dim=DIM, dtype=dtype, mode=mode,
                            include_last_offset=include_last_offset)
    graph = helper.make_graph(
        [node], "tiny",
        [helper.make_tensor_value_info("indices", index_type, ["N"]),
         helper.make_tensor_value_info("offsets", index_type, ["O"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", len(TABLE_ROWS) * DIM])],
        [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, 1)])
    onnx.save(model, str(path))
    return w


def _reference(w, dtype, mode, indices, offsets, batch, include_last_offset):
    if dtype in C.ROWWISE:
        from dlrm_deploy.export import dequantize_int4_rowwise, dequantize_int8_rowwise

        dequantize = dequantize_int8_rowwise if dtype == "int8" else dequantize_int4_rowwise
        table = np.asarray(dequantize(w, DIM), dtype=np.float32)
    else:
        table = w.astype(np.float32)
    T = len(TABLE_ROWS)
    base = np.cumsum([0] + TABLE_ROWS)
    ends = list(offsets[1:]) + ([] if include_last_offset else [len(indices)])
    out = np.zeros((batch, T * DIM), np.float32)
    for t in range(T):
        for b in range(batch):
            s, e = offsets[t * batch + b], ends[t * batch + b]
            if e > s:
                rows = table[base[t] + indices[s:e]]
                out[b, t * DIM:(t + 1) * DIM] = rows.sum(0) if mode == "sum" else rows.mean(0)
    return out


def _inputs(batch, include_last_offset, pooling=3, seed=1):
    rng = np.random.default_rng(seed)
    indices, offsets = [], []
    for rows in TABLE_ROWS:
        for _ in range(batch):
            offsets.append(len(indices))
            indices += list(rng.integers(0, rows, rng.integers(0, 2 * pooling)))
    if include_last_offset:
        offsets.append(len(indices))
    return np.array(indices, np.int64), np.array(offsets, np.int64)


def _rtx_only() -> bool:
    """True when the only TensorRT module is TensorRT-RTX (which refuses some GPUs, e.g. compute 9.0)."""
    import importlib.util

    return importlib.util.find_spec("tensorrt") is None and importlib.util.find_spec("tensorrt_rtx_bindings") is not None


def _session(plan):
    """trt_session(plan); skips (after a successful build) where TensorRT-RTX cannot run engines."""
    from dlrm_deploy.runtime.trt import trt_session

    try:
        return trt_session(plan)
    except RuntimeError as e:
        if _rtx_only():
            pytest.skip(f"the engine built, but TensorRT-RTX cannot run engines on this GPU: {e}")
        raise


@requires_trt
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,mode,ilo", [("fp32", "sum", 0), ("fp16", "mean", 1), ("int8", "sum", 0),
                                            ("int4", "mean", 1)])
def test_engine_build_and_run(tmp_path, dtype, mode, ilo):
    """Row-wise (int8/int4) tables: build_trt_engine hands their bytes to TensorRT as int32 views
    (plugins take no uint8 inputs); the plugin reads the same bytes."""
    from dlrm_deploy.runtime.trt import build_trt_engine

    onnx_path = tmp_path / "tiny.onnx"
    w = _tiny_model(onnx_path, dtype, mode, include_last_offset=ilo)
    plan = build_trt_engine(onnx_path, tmp_path / "tiny.plan", max_batch=64, opt_batch=16, pooling=3, max_pooling=6)
    sess = _session(plan)
    for batch in (1, 16, 64):
        indices, offsets = _inputs(batch, ilo)
        (out,) = sess.run({"indices": indices, "offsets": offsets})
        ref = _reference(w, dtype, mode, indices, offsets, batch, ilo)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _tiny_per_table_model(path, mode="sum", include_last_offset=0, weighted=False):
    """One EmbeddingBag node in the per-table form: weights, indices_t, offsets_t[, psw_t] per table."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((sum(TABLE_ROWS), DIM)).astype(np.float32)
    T = len(TABLE_ROWS)
    names = [f"indices_{t}" for t in range(T)] + [f"offsets_{t}" for t in range(T)]
    if weighted:
        names += [f"psw_{t}" for t in range(T)]
    node = helper.make_node(C.OP_TYPE, ["weights", *names], ["out"], domain=C.DOMAIN, table_rows=TABLE_ROWS, dim=DIM,
                            mode=mode, include_last_offset=include_last_offset)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT if n.startswith("psw") else TensorProto.INT64,
                                           [n.replace("offsets", "O").replace("indices", "N").replace("psw", "N")])
              for n in names]
    graph = helper.make_graph([node], "tiny_per_table", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", T * DIM])],
                              [numpy_helper.from_array(w, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, 1)])
    onnx.save(model, str(path))
    return w


def _per_table_inputs(batch, include_last_offset, weighted, trailing=2, seed=1):
    """Each table's own ids (1..5 per bag), offsets from 0 and weights; with include_last_offset the
    last offset ends the last bag and `trailing` ids follow it (ignored, as in PyTorch)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t, rows in enumerate(TABLE_ROWS):
        lengths = rng.integers(1, 6, batch)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        extra = trailing if include_last_offset else 0
        feeds[f"indices_{t}"] = rng.integers(0, rows, int(offsets[-1]) + extra).astype(np.int64)
        feeds[f"offsets_{t}"] = (offsets if include_last_offset else offsets[:-1]).astype(np.int64)
        if weighted:
            feeds[f"psw_{t}"] = rng.standard_normal(len(feeds[f"indices_{t}"])).astype(np.float32)
    return feeds


def _per_table_reference(w, mode, feeds, batch, include_last_offset):
    base = np.cumsum([0] + TABLE_ROWS)
    out = np.zeros((batch, len(TABLE_ROWS) * DIM), np.float32)
    for t in range(len(TABLE_ROWS)):
        ids, off = feeds[f"indices_{t}"], feeds[f"offsets_{t}"]
        psw = feeds.get(f"psw_{t}")
        ends = list(off[1:]) + ([] if include_last_offset else [len(ids)])
        for b in range(batch):
            s, e = off[b], ends[b]
            if e > s:
                rows = w[base[t] + ids[s:e]]
                if psw is not None:
                    rows = rows * psw[s:e, None]
                out[b, t * DIM:(t + 1) * DIM] = rows.sum(0) if mode == "sum" else rows.mean(0)
    return out


@requires_trt
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("mode,ilo,weighted", [("sum", 0, True), ("mean", 1, False), ("sum", 1, True)])
def test_engine_per_table_form(tmp_path, mode, ilo, weighted):
    """The exporter's per-table form (each table's own indices, offsets and weights) builds and runs."""
    from dlrm_deploy.runtime.trt import build_trt_engine

    onnx_path = tmp_path / "tiny_per_table.onnx"
    w = _tiny_per_table_model(onnx_path, mode, ilo, weighted)
    max_batch, max_ids = 64, 64 * 5 + 2
    shapes = {}
    for t in range(len(TABLE_ROWS)):
        shapes[f"offsets_{t}"] = ([1 + ilo], [16 + ilo], [max_batch + ilo])
        for name in (f"indices_{t}",) + ((f"psw_{t}",) if weighted else ()):
            shapes[name] = ([1], [16 * 3], [max_ids])
    plan = build_trt_engine(onnx_path, tmp_path / "tiny_per_table.plan", max_batch=max_batch, opt_batch=16,
                            shapes=shapes)
    sess = _session(plan)
    for batch in (1, 16, 64):
        feeds = _per_table_inputs(batch, ilo, weighted)
        (out,) = sess.run(feeds)
        ref = _per_table_reference(w, mode, feeds, batch, ilo)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@requires_trt
@pytest.mark.trt
@pytest.mark.gpu
def test_engine_rejects_bad_indices_without_reading_out_of_bounds(tmp_path):
    """check=checked runs deferred inside TensorRT: the bad lookup gives zeros and is logged."""
    from dlrm_deploy.runtime.trt import build_trt_engine

    onnx_path = tmp_path / "tiny.onnx"
    w = _tiny_model(onnx_path)
    plan = build_trt_engine(onnx_path, tmp_path / "tiny.plan", max_batch=8, pooling=3)
    sess = _session(plan)
    indices, offsets = _inputs(4, 0)
    assert len(indices) > 0
    bad = indices.copy()
    bad[0] = 10**6
    (out,) = sess.run({"indices": bad, "offsets": offsets})
    # Reference: the bad lookup contributes zeros to the bag holding position 0 (table 0).
    good = indices.copy()
    ref = _reference(w, "fp32", "sum", good, offsets, 4, 0)
    bag = int(np.searchsorted(offsets, 0, side="right")) - 1
    ref[bag, :DIM] -= w[good[0]]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@requires_trt
@pytest.mark.trt
def test_profile_from_onnx(tmp_path):
    from dlrm_deploy.runtime.trt import engine_profile

    onnx_path = tmp_path / "tiny.onnx"
    _tiny_model(onnx_path, include_last_offset=1)
    prof = engine_profile(onnx_path, min_batch=2, opt_batch=8, max_batch=32, pooling=2, max_pooling=4)
    T = len(TABLE_ROWS)
    assert prof["offsets"] == ([T * 2 + 1], [T * 8 + 1], [T * 32 + 1])
    assert prof["indices"] == ([1], [T * 8 * 2], [T * 32 * 4])


def test_engine_profile_without_trt(tmp_path):
    """The profile derivation needs only the ONNX file."""
    from dlrm_deploy.runtime.trt import engine_profile

    onnx_path = tmp_path / "tiny.onnx"
    _tiny_model(onnx_path)
    prof = engine_profile(onnx_path, max_batch=16, pooling=2)
    T = len(TABLE_ROWS)
    assert prof["offsets"] == ([T], [T * 16], [T * 16])
    assert prof["indices"] == ([1], [T * 16 * 2], [T * 16 * 2])
    with pytest.raises(ValueError):
        engine_profile(onnx_path, min_batch=8, max_batch=4)


@pytest.mark.skipif(not os.environ.get("DLRM_DEPLOY_TRT_ONNX"), reason="set DLRM_DEPLOY_TRT_ONNX to an exported model")
@requires_trt
@pytest.mark.trt
def test_parse_exported_model():
    """The exported file parses with no change: every EmbeddingBag node becomes our plugin."""
    from dlrm_deploy.runtime.trt import load_plugin, trt_logger, trt_module

    trt = trt_module()
    load_plugin(trt)
    builder = trt.Builder(trt_logger(trt))
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger(trt))
    ok = parser.parse_from_file(os.environ["DLRM_DEPLOY_TRT_ONNX"])
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_trt_build_save_onnx_hands_row_bytes_as_int32(tmp_path, monkeypatch, capsys, dtype):
    """`trt-build --save-onnx` writes the model as TensorRT gets it (row-wise tables as int32 views of the
    same bytes), also where no TensorRT module is installed (then it says no engine was built)."""
    from dlrm_deploy import cli
    from dlrm_deploy.runtime import trt as T

    monkeypatch.setenv("DLRM_DEPLOY_TRT_MODULE", "no_such_tensorrt_module")
    monkeypatch.setattr(T, "_modules", {})
    path = tmp_path / "tiny.onnx"
    w = _tiny_model(path, dtype)
    out = tmp_path / "tiny.trt.onnx"
    assert cli.main(["trt-build", str(path), "--save-onnx", str(out)]) == 0
    t = onnx.load(str(out)).graph.initializer[0]
    assert t.data_type == TensorProto.INT32 and list(t.dims) == [sum(TABLE_ROWS), C.row_bytes(dtype, DIM) // 4]
    assert numpy_helper.to_array(t).tobytes() == np.ascontiguousarray(w).tobytes()
    assert "no engine built" in capsys.readouterr().err
    assert T.trt_onnx_model(out)[1] == 0  # already int32: nothing left to retype
