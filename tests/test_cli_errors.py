"""`dlrm-deploy run` and `dlrm-deploy export` as a user meets them (subprocesses): a user's mistake is
one line on stderr and exit code 2, never a traceback; an export writes its files whole or not at
all, overwrites an earlier export (external data included, also in the current folder) and leaves
no orphaned or temporary file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlrm_deploy import contract as C

SMALL = ["--config", "small", "--batch", "4", "--rows", "200", "--no-validate"]


def dd(*args, cwd=None, env=None):
    """Runs `dlrm-deploy args...`; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("DLRM_DEPLOY_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "dlrm_deploy.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=600)


def assert_user_error(proc, *needles):
    """Exit code 2, one line on stderr containing every needle, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in err, err


# ---------------------------------------------------------------------------------------------
# dlrm-deploy run


def test_run_missing_file(tmp_path):
    assert_user_error(dd("run", tmp_path / "nope.onnx"), "not found", "nope.onnx")


def test_run_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model\n")
    assert_user_error(dd("run", bad, "--runs", "1"), "dlrm-deploy run: error:")


def test_run_bad_option_values(tmp_path):
    assert_user_error(dd("run", tmp_path / "m.onnx", "--batch", "0"), "--batch")


def test_run_plan_without_tensorrt(tmp_path):
    """A .plan runs with TensorRT (chosen from the suffix); its inputs come from the ONNX file beside
    it or --onnx. A missing ONNX file, or TensorRT missing, is one line saying so."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 64)
    assert_user_error(dd("run", plan), "pass --onnx")  # no m.onnx beside it
    assert_user_error(dd("run", plan, "--onnx", tmp_path / "missing.onnx"), "--onnx file not found")
    _psw_model(tmp_path / "m.onnx", 3)
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # CI: no TensorRT
        assert_user_error(dd("run", plan, "--batch", "3", "--pooling", "1"), "TensorRT")
    else:  # a TensorRT that cannot read the fake engine
        assert_user_error(dd("run", plan, "--batch", "3", "--pooling", "1"), "dlrm-deploy run: error:")
    assert_user_error(dd("run", plan, "--runtime", "ort"), "--runtime trt")
    assert_user_error(dd("run", tmp_path / "m.onnx", "--onnx", "x.onnx"), "--onnx is for --runtime trt")


def _psw_model(path, psw_len: int):
    """One table (10 x 4), per-sample weights input with a fixed length (wrong for most batches)."""
    attrs = C.validate_attributes(dict(table_rows=[10], dim=4))  # every contract attribute, defaults filled
    node = helper.make_node(C.OP_TYPE, ["w", "ids", "offsets", "psw"], ["out"], domain=C.DOMAIN,
                            **{k: attrs[k] for k in [f.name for f in C.FIELDS]})
    graph = helper.make_graph(
        [node], "psw",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("offsets", TensorProto.INT64, ["b"]),
         helper.make_tensor_value_info("psw", TensorProto.FLOAT, [psw_len])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 4])],
        [numpy_helper.from_array(np.ones((10, 4), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(C.DOMAIN, 1)])
    onnx.save(model, str(path))


def test_run_wrong_per_sample_weights_shape(tmp_path):
    path = tmp_path / "psw.onnx"
    _psw_model(path, 3)
    assert_user_error(dd("run", path, "--device", "cpu", "--batch", "8", "--runs", "1"), "dlrm-deploy run: error:")


# ---------------------------------------------------------------------------------------------
# dlrm-deploy export


def test_export_bad_config(tmp_path):
    assert_user_error(dd("export", "--config", "huge", "--out", tmp_path / "m.onnx"), "unknown config 'huge'")
    assert not list(tmp_path.iterdir())


def test_export_unwritable_paths(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_user_error(dd("export", *SMALL, "--out", a_file / "m.onnx"), "not a folder")
    assert_user_error(dd("export", *SMALL, "--out", tmp_path), "is a folder")
    assert_user_error(dd("export", *SMALL, "--hot-rows-from", tmp_path / "no.txt", "--out", tmp_path / "m.onnx"),
                      "--hot-rows-from file not found")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert_user_error(dd("export", *SMALL, "--out", ro / "m.onnx"), "no write permission")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["file"] + (["ro"] if os.geteuid() else []))


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_external_data_twice_in_current_folder(tmp_path):
    """--out a bare name in the current folder, twice, with external data: both succeed, the second
    replaces the first, nothing else is left; an export without external data then removes the
    stale .data file."""
    for seed in (0, 1):
        proc = dd("export", *SMALL, "--external-data", "--dtype", "fp16", "--seed", seed, "--out", "dlrm.onnx",
                  cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert _files(tmp_path) == ["dlrm.onnx", "dlrm.onnx.data"]
    onnx.checker.check_model(str(tmp_path / "dlrm.onnx"), full_check=True)
    m = onnx.load(str(tmp_path / "dlrm.onnx"), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"dlrm.onnx.data"}
    proc = dd("export", *SMALL, "--out", "dlrm.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _files(tmp_path) == ["dlrm.onnx"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    """A failure at the last step (the checker) leaves the earlier export as it was and no new file."""
    from dlrm_deploy.export import DLRM, export_onnx, make_inputs

    model, example = DLRM("small", seed=0), make_inputs("small", 4, seed=1)
    path = tmp_path / "m.onnx"
    export_onnx(model, example, path, external_data=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_checker(*_a, **_k):
        raise onnx.checker.ValidationError("simulated failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken_checker)
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(model, example, path, external_data=True, dtype="fp16")
    with pytest.raises(onnx.checker.ValidationError):
        export_onnx(model, example, tmp_path / "new.onnx", external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_run_cuda_graph_needs_cuda(tmp_path):
    path = tmp_path / "psw.onnx"
    _psw_model(path, 6)
    assert_user_error(dd("run", path, "--device", "cpu", "--cuda-graph"), "--cuda-graph needs --device cuda")
