"""Checking a deployed DLRM against PyTorch: the ONNX feeds of its inputs, the error measure, and the
tolerance per table dtype. Shared by the demo and the benchmarks (the product owns its tolerance)."""

from __future__ import annotations

import numpy as np

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8": 2e-2}  # max abs error of the probability

# Row-wise quantized tables: per row, step = (max - min) / LEVELS (255 for int8's 8-bit codes, 15 for
# int4's 4-bit codes; export/tables.py), and each stored value is within step / 2 of the fp32 one.
# The model's output error is, to first order, linear in those per-element errors, so at the same
# tables it scales with the step: int4's tolerance is int8's times the ratio of the steps (255 / 15 =
# 17). (Measured on the `small` DLRM, 512 samples, two seeds, ONNX Runtime CPU: max abs error of the
# probability int8 2.8e-5 / 7.2e-5, int4 3.3e-4 / 1.6e-3: a ratio of 12 and 23.)
LEVELS = {"int8": 255, "int4": 15}
TOLERANCE["int4"] = TOLERANCE["int8"] * LEVELS["int8"] / LEVELS["int4"]


def compare(got, want) -> tuple[float, float]:
    """(max abs error, max error relative to max |want|) of two arrays."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    if got.shape != want.shape:
        raise ValueError(f"output shape {got.shape} != reference {want.shape}")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    return err, err / max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)


def onnx_feeds(names: list[str], dense, indices, offsets) -> dict:
    """Feeds for a DLRM ONNX file: dense, indices_t..., offsets_t... in the model's input order."""
    values = [dense] + list(indices) + list(offsets)
    if len(names) != len(values):
        raise ValueError(f"model has {len(names)} inputs, inputs have {len(values)} tensors")
    return {n: v.detach().cpu().numpy() for n, v in zip(names, values)}
