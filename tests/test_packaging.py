"""The package finds its libraries the one documented way, reports its build, and a build that
cannot produce the ONNX Runtime op library stops with one clear message."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import dlrm_deploy
from dlrm_deploy import libraries

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_library_path_finds_every_built_library():
    for kind, name in libraries.LIBRARIES.items():
        try:
            path = pathlib.Path(dlrm_deploy.library_path(kind))
        except FileNotFoundError as e:
            assert kind == "trt" and "was not built" in str(e)  # only the TensorRT plugin is optional
            continue
        assert path.name == name and path.is_file()
        assert path.parent == libraries.library_dir()


def test_onnxruntime_registers_the_op_library_by_library_path():
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.register_custom_ops_library(dlrm_deploy.library_path("ort"))


def test_unknown_library_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown library 'cuda'"):
        dlrm_deploy.library_path("cuda")


def test_missing_library_names_the_builds_reason(tmp_path, monkeypatch):
    shutil.copy(libraries.library_dir() / libraries.LIBRARIES["core"], tmp_path)
    (tmp_path / libraries.BUILD_INFO).write_text(json.dumps({"trt": {"built": False, "reason": "no TensorRT headers"}}))
    monkeypatch.setenv("DLRM_DEPLOY_LIB_DIR", str(tmp_path))
    assert libraries.library_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"libdlrm_deploy_trt.so was not built \(no TensorRT headers\)"):
        dlrm_deploy.library_path("trt")
    with pytest.raises(FileNotFoundError, match="libdlrm_deploy_ort.so was not built"):
        dlrm_deploy.library_path("ort")


def test_build_info_records_what_was_compiled():
    info = libraries.build_info()
    assert info["version"] == dlrm_deploy.__version__
    assert info["ort"]["built"] is True and info["ort"]["ort_api"] >= 18
    assert info["triton"]["built"] is True  # the Triton backend builds wherever the op library does
    assert "built" in info["cuda"] and "built" in info["trt"]
    if info["cuda"]["built"]:
        assert "90" in info["cuda"]["architectures"]
    else:
        assert info["cuda"]["reason"]


def test_info_command_reports_libraries_and_versions():
    out = subprocess.run([sys.executable, "-m", "dlrm_deploy.cli", "info", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["dlrm_deploy"] == dlrm_deploy.__version__
    assert info["libraries"]["ort"]["path"] == dlrm_deploy.library_path("ort")
    assert info["core"]["loaded"] and info["core"]["version"] == dlrm_deploy.__version__
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    text = subprocess.run([sys.executable, "-m", "dlrm_deploy.cli", "info"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "CUDA kernels:" in text.stdout and dlrm_deploy.library_path("core") in text.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_build_without_onnxruntime_headers_stops_with_one_clear_message(tmp_path):
    env = dict(os.environ, ONNXRUNTIME_ROOT=str(tmp_path / "no-onnxruntime"))
    out = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DDD_WITH_CUDA=OFF"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    err = " ".join(out.stderr.split())
    assert "cannot build the ONNX Runtime op library" in err and "set ONNXRUNTIME_ROOT" in err
    assert "-DDD_WITH_ORT=OFF" in err
    ok = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build2"), "-DDD_WITH_CUDA=OFF",
                         "-DDD_WITH_ORT=OFF"], env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    info = (tmp_path / "build2" / "lib" / "build_info.json").read_text()
    assert json.loads(info)["ort"] == {"built": False, "reason": "DD_WITH_ORT=OFF"}


def test_version_is_written_once():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "\nversion =" not in text
    assert '"0.1.0"' not in (ROOT / "cpp" / "src" / "config.cpp").read_text()
