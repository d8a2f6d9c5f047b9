"""Polygraphy helpers for comparing TensorRT (our plugin) with ONNX Runtime (our custom-op library).

Random inputs from Polygraphy's default data loader are not valid EmbeddingBag inputs (offsets must
be non-decreasing, ids below each table's rows), so the inputs come from ``load_data`` here:

  DD_ONNX=model.onnx polygraphy run model.onnx --trt --plugins build/lib/libdlrm_deploy_trt.so \\
      --data-loader-script tests/trt_harness/polygraphy_io.py:load_data ...

Polygraphy's command line cannot register an ONNX Runtime custom-op library (its ONNX Runtime
options are the execution providers only), so the TensorRT-vs-ONNX-Runtime comparison runs through
its Python API, with the session built here:

  python tests/trt_harness/polygraphy_io.py model.onnx [--batch 256] [--pooling 8] [--fp16]

Environment for load_data: DD_ONNX (required), DD_BATCH (256), DD_POOLING (8), DD_ITERATIONS (1).
"""

from __future__ import annotations

import argparse
import os
import sys


def load_data():
    """Polygraphy data loader: valid feeds for the model named by $DD_ONNX."""
    from dlrm_deploy.runtime.triton import sample_inputs

    path = os.environ["DD_ONNX"]
    batch, pooling = int(os.environ.get("DD_BATCH", 256)), int(os.environ.get("DD_POOLING", 8))
    for i in range(int(os.environ.get("DD_ITERATIONS", 1))):
        yield sample_inputs(path, batch=batch, pooling=pooling, seed=i)


def ort_session_with_custom_ops(path, providers=("CUDAExecutionProvider", "CPUExecutionProvider")):
    """An onnxruntime.InferenceSession with libdlrm_deploy_ort.so registered."""
    import onnxruntime as ort

    from dlrm_deploy.runtime.ort import custom_op_library

    so = ort.SessionOptions()
    so.register_custom_ops_library(custom_op_library())
    available = set(ort.get_available_providers())
    return ort.InferenceSession(str(path), so, providers=[p for p in providers if p in available])


def main(argv=None) -> int:
    """Builds the TensorRT engine with the plugin, runs both runtimes on the same inputs, compares."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, TrtRunner)
    from polygraphy.comparator import Comparator, CompareFunc

    from dlrm_deploy.runtime.trt import engine_profile, trt_plugin_library

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--pooling", type=int, default=8)
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-4)
    a = p.parse_args(argv)
    os.environ.update(DD_ONNX=a.onnx, DD_BATCH=str(a.batch), DD_POOLING=str(a.pooling))

    profile = Profile()
    for name, (lo, opt, hi) in engine_profile(a.onnx, max_batch=a.batch, pooling=a.pooling).items():
        profile.add(name, min=lo, opt=opt, max=hi)
    network = NetworkFromOnnxPath(a.onnx)
    engine = EngineFromNetwork(network, config=CreateConfig(fp16=a.fp16, profiles=[profile]))
    import tensorrt

    tensorrt.get_plugin_registry().load_library(trt_plugin_library())
    runners = [TrtRunner(engine), OnnxrtRunner(lambda: ort_session_with_custom_ops(a.onnx))]
    results = Comparator.run(runners, data_loader=load_data())
    ok = bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=a.atol, rtol=a.rtol)))
    print("TensorRT vs ONNX Runtime:", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
