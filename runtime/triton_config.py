"""config.pbtxt text for the onnxruntime and tensorrt backends, and the ONNX -> Triton type table.

The python backend's config is written by triton_python.py; both are checked against Triton's own
schema by triton_validate.py.
"""

from __future__ import annotations

import json

import numpy as np

from dlrm_deploy.libraries import LIBRARIES

from .model_io import ModelIO

ORT_LIBRARY = LIBRARIES["ort"]
TRT_LIBRARY = LIBRARIES["trt"]
BACKENDS = ("onnxruntime", "tensorrt", "python", "native")
# What config.pbtxt names our native backend (libtriton_dlrm_deploy.so in backends/dlrm_deploy/).
NATIVE_BACKEND = "dlrm_deploy"
BATCHING = ("auto", "none", "dynamic")

# ONNX TensorProto element type -> (Triton TYPE_*, perf_analyzer/tritonclient datatype, numpy dtype)
_ONNX_TO_TRITON = {
    1: ("TYPE_FP32", "FP32", "float32"),
    2: ("TYPE_UINT8", "UINT8", "uint8"),
    3: ("TYPE_INT8", "INT8", "int8"),
    4: ("TYPE_UINT16", "UINT16", "uint16"),
    5: ("TYPE_INT16", "INT16", "int16"),
    6: ("TYPE_INT32", "INT32", "int32"),
    7: ("TYPE_INT64", "INT64", "int64"),
    8: ("TYPE_STRING", "BYTES", "object"),
    9: ("TYPE_BOOL", "BOOL", "bool"),
    10: ("TYPE_FP16", "FP16", "float16"),
    11: ("TYPE_FP64", "FP64", "float64"),
    12: ("TYPE_UINT32", "UINT32", "uint32"),
    13: ("TYPE_UINT64", "UINT64", "uint64"),
    16: ("TYPE_BF16", "BF16", None),  # numpy has no bfloat16; tritonclient sends it as raw bytes
}

def triton_dtype(elem_type: int) -> str:
    """Triton ``TYPE_*`` name of an ONNX ``TensorProto`` element type; ValueError if Triton has none."""
    try:
        return _ONNX_TO_TRITON[elem_type][0]
    except KeyError:
        raise ValueError(f"ONNX element type {elem_type} has no Triton equivalent") from None


def numpy_dtype(elem_type: int) -> str:
    """The numpy dtype name of an ONNX element type (ValueError for one without)."""
    name = _ONNX_TO_TRITON.get(elem_type, (None, None, None))[2]
    if name is None:
        raise ValueError(f"ONNX element type {elem_type} has no numpy dtype")
    return name


def perf_analyzer_data(inputs: dict[str, np.ndarray]) -> dict:
    """perf_analyzer ``--input-data`` JSON for one request (content flattened, shape explicit)."""
    return {"data": [{name: {"content": a.reshape(-1).tolist(), "shape": list(a.shape)}
                      for name, a in inputs.items()}]}


# --------------------------------------------------------------------------------------------------
# config.pbtxt
# --------------------------------------------------------------------------------------------------

def _dims_text(dims) -> str:
    """A dims list in protobuf text format, e.g. [ -1, 13 ]."""
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _q(s: str) -> str:
    """A quoted protobuf text-format string."""
    return json.dumps(s)  # a JSON string literal is a valid protobuf text-format string here


def _io_block(key: str, tensors, batched: bool, ragged: bool) -> list[str]:
    """input [...] / output [...]: dims without the batch dim when batched; ragged: 1-D, allow_ragged_batch."""
    out = [f"{key} ["]
    for i, t in enumerate(tensors):
        dims = [-1] if ragged else (t.triton_dims[1:] if batched else t.triton_dims)
        role = "" if t.role in ("dense", "output") else f"  # {t.role} of EmbeddingBag #{t.bag}"
        out += ["  {" + role, f"    name: {_q(t.name)}", f"    data_type: {triton_dtype(t.elem_type)}",
                f"    dims: {_dims_text(dims)}"]
        if ragged and key == "input":
            out.append("    allow_ragged_batch: true")
        out.append("  }" + ("," if i + 1 < len(tensors) else ""))
    return out + ["]"]


def _batching_lines(batched: bool, max_batch_size: int, ragged_source: str | None) -> list[str]:
    if ragged_source:
        return ["# Requests merged per execution. Ragged inputs arrive concatenated (1-D): per-sample lengths",
                "# and ids concatenate exactly, dense rows are flattened; each output is scattered back by the",
                f"# per-request shape of '{ragged_source}' (one value per sample).",
                f"max_batch_size: {max_batch_size}"]
    if batched:
        return [f"max_batch_size: {max_batch_size}"]
    return ["# 0: the EmbeddingBag inputs (indices [N], offsets [T*B]) are ragged and table-major, so",
            "# requests must not be concatenated along dim 0; every request carries a whole batch of",
            f"# up to {max_batch_size} samples (docs/triton.md).",
            "max_batch_size: 0"]


def _tail_lines(backend, batched, kind, instances, gpus, op_library, preferred_batch_sizes, max_queue_delay_us,
                cuda_options) -> list[str]:
    """instance_group, dynamic_batching, model_operations, optimization."""
    group = [f"    count: {instances}", f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}"]
    if gpus and kind == "gpu":
        group.append(f"    gpus: {_dims_text(gpus)}")
    lines = ["instance_group [", "  {"] + group + ["  }", "]"]
    if batched:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: {_dims_text(preferred_batch_sizes)}")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    if op_library:
        lines += ["# The custom-op library registers dlrm_deploy::EmbeddingBag with ONNX Runtime; the backend",
                  "# dlopens this path as it stands, so it is absolute (where the server sees the repository).",
                  "model_operations {", f"  op_library_filename: [ {_q(op_library)} ]", "}"]
    if backend == "onnxruntime" and kind == "gpu" and cuda_options:
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [", "      {",
                  '        name: "cuda"']
        for k, v in cuda_options.items():
            lines.append(f"        parameters {{ key: {_q(k)} value: {_q(str(v))} }}")
        lines += ["      }", "    ]", "  }", "}"]
    return lines


def config_text(io: ModelIO, name: str, backend: str, *, batched: bool, max_batch_size: int,
                instances: int = 1, kind: str = "gpu", gpus: list[int] | None = None,
                op_library: str | None = None, preferred_batch_sizes: list[int] | None = None,
                max_queue_delay_us: int = 0, cuda_options: dict | None = None,
                ragged_source: str | None = None) -> str:
    """The text of config.pbtxt (protobuf text format of Triton's ``inference.ModelConfig``).

    ragged_source: for a lengths-form model with flattened dense inputs (export/lengths.py), the
    per-sample lengths input whose per-request shape scatters the outputs: every input becomes a
    ragged 1-D input, the outputs 1-D, with dynamic batching (`batched` is implied)."""
    batched = batched or ragged_source is not None
    lines = ["# Written by dlrm-deploy triton-repo from the ONNX file's inputs and outputs.", f"name: {_q(name)}"]
    if backend == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "tensorrt"', 'platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    lines += _batching_lines(batched, max_batch_size, ragged_source)
    ragged = ragged_source is not None
    lines += _io_block("input", io.inputs, batched, ragged) + _io_block("output", io.outputs, batched, ragged)
    if ragged:
        lines.append("batch_output [")
        for i, t in enumerate(io.outputs):
            lines += ["  {", f"    target_name: [ {_q(t.name)} ]", "    kind: BATCH_SCATTER_WITH_INPUT_SHAPE",
                      f"    source_input: [ {_q(ragged_source)} ]", "  }" + ("," if i + 1 < len(io.outputs) else "")]
        lines.append("]")
    lines += _tail_lines(backend, batched, kind, instances, gpus, op_library, preferred_batch_sizes,
                         max_queue_delay_us, cuda_options)
    return "\n".join(lines) + "\n"


# CUDA execution-provider options for the onnxruntime backend. Request sizes vary (N lookups), so
# growing the arena by exactly what is asked wastes less memory than powers of two.
DEFAULT_CUDA_OPTIONS = {"arena_extend_strategy": "kSameAsRequested"}
