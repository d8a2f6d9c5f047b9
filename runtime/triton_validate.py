"""Checks a written model folder against Triton's own configuration schema (``model_config.proto``
as shipped in ``tritonclient``) and against the ONNX file it serves."""

from __future__ import annotations

import os
import pathlib

from .model_io import describe_onnx
from .triton_config import BACKENDS, NATIVE_BACKEND, triton_dtype

def load_config(config_path):
    """Parses config.pbtxt with Triton's schema (``tritonclient.grpc.model_config_pb2.ModelConfig``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ImportError("validating a Triton config needs `pip install tritonclient[grpc]` "
                          "(it ships Triton's model_config.proto)") from e
    return text_format.Parse(pathlib.Path(config_path).read_text(), model_config_pb2.ModelConfig())


def validate_repo(model_dir, onnx_path=None):
    """Checks ``model_dir/config.pbtxt`` against Triton's schema and the model's ONNX file (default:
    the copy in the repository): every input and output with the same name, type and dims, in the
    batching mode the model allows, and the files the backend will open. Returns the parsed config;
    raises ValueError listing every mismatch."""
    model_dir = pathlib.Path(model_dir)
    cfg = load_config(model_dir / "config.pbtxt")
    if cfg.backend in ("python", NATIVE_BACKEND):
        from .triton_python import validate_python_repo

        return validate_python_repo(model_dir, onnx_path)
    errors = []
    backend = cfg.backend or ("tensorrt" if cfg.platform == "tensorrt_plan" else cfg.platform)
    if backend not in BACKENDS:
        errors.append(f"backend '{cfg.backend}' / platform '{cfg.platform}' is not onnxruntime or tensorrt")
    if cfg.name != model_dir.name:
        errors.append(f"config name '{cfg.name}' differs from the folder name '{model_dir.name}'")
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        errors.append("no numeric version folder")
    if onnx_path is None:
        candidates = [model_dir / "onnx" / "model.onnx"] + [v / "model.onnx" for v in versions]
        onnx_path = next((c for c in candidates if c.is_file()), None)
        if onnx_path is None:
            raise ValueError(f"{model_dir}: no ONNX file to compare with; pass onnx_path")
    io = describe_onnx(onnx_path)
    batched = cfg.max_batch_size > 0
    ragged = batched and bool(cfg.input) and all(i.allow_ragged_batch for i in cfg.input)
    if ragged:
        errors += _check_ragged(cfg, io)
    elif batched and io.batch_dim is None:
        errors.append("max_batch_size > 0, but the model's inputs do not all share a leading batch dim")
    if cfg.HasField("dynamic_batching") and not batched:
        errors.append("dynamic_batching needs max_batch_size > 0")

    errors += _check_tensors("input", cfg.input, io.inputs, batched, ragged)
    errors += _check_tensors("output", cfg.output, io.outputs, batched, ragged)
    errors += _check_files(cfg, model_dir, backend, versions, io)
    if errors:
        raise ValueError(f"{model_dir / 'config.pbtxt'}:\n  " + "\n  ".join(errors))
    return cfg


def _check_ragged(cfg, io) -> list[str]:
    """A ragged-batching config (lengths form): 1-D model inputs, lengths inputs, every output
    scattered back by a lengths input's shape."""
    from tritonclient.grpc import model_config_pb2 as pb

    errors = [f"ragged input '{t.name}' is {len(t.dims)}-D in the model; ragged inputs arrive 1-D "
              "(export/lengths.py flat_dense)" for t in io.inputs if len(t.dims) != 1]
    lengths = {t.name for t in io.inputs if t.role == "lengths"}
    if not lengths:
        errors.append("ragged batching needs per-sample lengths inputs (export/lengths.py); offsets do not merge")
    scattered = {n for b in cfg.batch_output if b.kind == pb.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE
                 and set(b.source_input) <= lengths for n in b.target_name}
    missing = [t.name for t in io.outputs if t.name not in scattered]
    if missing:
        errors.append(f"outputs {missing} need a batch_output BATCH_SCATTER_WITH_INPUT_SHAPE from a lengths input")
    return errors


def _check_tensors(kind: str, declared, tensors, batched: bool, ragged: bool = False) -> list[str]:
    """Mismatches between declared config inputs/outputs and the model's (names, order, types, dims)."""
    from tritonclient.grpc import model_config_pb2 as pb

    errors = []
    by_name = {t.name: t for t in tensors}
    if [d.name for d in declared] != [t.name for t in tensors]:
        errors.append(f"{kind}s {[d.name for d in declared]} != model's {[t.name for t in tensors]}")
    for d in declared:
        t = by_name.get(d.name)
        if t is None:
            continue
        want_type = triton_dtype(t.elem_type)
        got_type = pb.DataType.Name(d.data_type)
        if got_type != want_type:
            errors.append(f"{kind} '{d.name}': data_type {got_type}, model has {want_type}")
        want = [-1] if ragged else (t.triton_dims[1:] if batched else t.triton_dims)
        if list(d.dims) != want:
            errors.append(f"{kind} '{d.name}': dims {list(d.dims)}, model has {want}"
                          + (" (without the batch dim)" if batched else ""))
    return errors


def _check_files(cfg, model_dir: pathlib.Path, backend: str, versions: list, io) -> list[str]:
    """Missing model, external-data and library files; relative library paths."""
    errors = []
    for lib in cfg.model_operations.op_library_filename:
        if not os.path.isabs(lib):
            errors.append(f"op_library_filename '{lib}' is relative; the backend dlopens it as written")
        local = model_dir / pathlib.Path(lib).name
        if not local.is_file():
            errors.append(f"op library {local.name} is not in {model_dir}")
    if backend == "onnxruntime":
        if not cfg.model_operations.op_library_filename and io.bags:
            errors.append("the model has dlrm_deploy::EmbeddingBag nodes but no model_operations library")
        for v in versions:
            if not (v / "model.onnx").exists():
                errors.append(f"{v.name}/model.onnx missing")
            else:
                for loc in describe_onnx(v / "model.onnx").external_data:
                    if not (v / loc).is_file():
                        errors.append(f"{v.name}/{loc} (external data) missing")
    if backend == "tensorrt" and not (model_dir / "build_plan.sh").exists():
        for v in versions:
            if not (v / "model.plan").exists():
                errors.append(f"{v.name}/model.plan missing and no build_plan.sh")
    return errors
