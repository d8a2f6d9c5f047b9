"""dlrm_deploy.runtime: the torch op, ONNX Runtime sessions, TensorRT engines, benchmarks and
Triton model repositories. Heavy dependencies (torch, onnxruntime, tensorrt) load lazily."""

from __future__ import annotations

from dlrm_deploy.libraries import library_dir, library_path  # noqa: F401

__all__ = ["library_path", "library_dir", "embedding_bag", "embedding_bag_tables", "custom_op_library", "ort_session",
           "trt_plugin_library", "build_trt_engine", "trt_session", "triton_repo"]

_LAZY = {
    "embedding_bag": "torch_op",
    "embedding_bag_tables": "torch_op",
    "custom_op_library": "ort",
    "ort_session": "ort",
    "trt_plugin_library": "trt",
    "build_trt_engine": "trt",
    "trt_session": "trt",
    "triton_repo": "triton",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
