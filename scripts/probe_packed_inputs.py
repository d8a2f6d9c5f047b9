"""ONNX Runtime's run time of an exported model as exported (per-table ids/offsets inputs) against
the same model with packed lookup inputs (export/packed_inputs.py), with the packed feeds in
pageable and in page-locked memory: the session.run of the Triton python backend's model.py.

    python scripts/probe_packed_inputs.py MODEL.onnx [--requests 1,16,32] [--runs 100] [--kind GPU|CPU]

A run of r requests = 64*r samples, 85 ids per bag on average; feeds are built outside the timing,
numpy arrays as model.py hands them to session.run. Each variant's output is checked against the
exported model's first. On a GPU machine: source scripts/gpu_env.sh build ort first.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dlrm_deploy.export.packed_inputs import pack_feeds, to_packed_inputs  # noqa: E402
from dlrm_deploy.libraries import library_path  # noqa: E402
from dlrm_deploy.runtime import triton_python as P  # noqa: E402
from dlrm_deploy.runtime.model_io import sample_inputs  # noqa: E402

_spec = importlib.util.spec_from_file_location("model_py", P.MODEL_TEMPLATE)
model_py = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx")
    ap.add_argument("--requests", default="1,16,32", help="requests of 64 samples merged into one run")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per point (median)")
    ap.add_argument("--kind", default="GPU", choices=("GPU", "CPU"), help="model.py's instance kind")
    args = ap.parse_args()
    src = pathlib.Path(args.onnx).resolve()
    exported = onnx.load(str(src), load_external_data=False)
    packed, n = to_packed_inputs(exported)
    if not n:
        print("probe_packed_inputs: the model has no fused per-table lookup node to pack", file=sys.stderr)
        return 2
    dst = src.with_name(f".{src.stem}_packed_probe.onnx")  # beside it: external data paths still hold
    onnx.save(packed, str(dst))
    lib = library_path("ort")
    try:
        sa = model_py.make_session(str(src.parent), {"onnx": src.name, "library": lib}, args.kind)
        sb = model_py.make_session(str(src.parent), {"onnx": dst.name, "library": lib}, args.kind)
    finally:
        dst.unlink()
    print(f"providers: {sa.get_providers()[0]}")
    cudart = model_py.load_cudart() if args.kind == "GPU" else None

    def timed(fn) -> float:
        fn()
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)) * 1e3

    for r in [int(x) for x in args.requests.split(",")]:
        feeds = sample_inputs(str(src), batch=64 * r, pooling=85, seed=r)
        pf = pack_feeds(exported, packed, feeds)
        variants = [("as exported", sa, feeds), ("packed", sb, pf)]
        staging = model_py.PinnedStaging(cudart) if cudart is not None else None
        if staging is not None:
            locked = {}
            for k, v in pf.items():
                locked[k] = staging.take(k, v.shape, v.dtype)
                locked[k][...] = v
            variants.append(("packed, page-locked", sb, locked))
        want = sa.run(None, feeds)[0].astype(np.float32)
        for name, sess, f in variants[1:]:
            err = float(np.abs(sess.run(None, f)[0].astype(np.float32) - want).max())
            if err > 1e-5:
                print(f"probe_packed_inputs: {name} differs from the export by {err:.3g}", file=sys.stderr)
                return 1
        times = ", ".join(f"{name} {timed(lambda s=sess, f=f: s.run(None, f)):.3f}" for name, sess, f in variants)
        print(f"{r:3d} request(s) of 64 samples, run ms: {times}")
        if staging is not None:
            staging.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
