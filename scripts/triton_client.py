#!/usr/bin/env python3
"""Sends one batch to a DLRM served by Triton (HTTP or gRPC) and compares the answer with ONNX Runtime
run locally on the same ONNX file (through our custom-op library).

    python scripts/triton_client.py --onnx dlrm.onnx --model dlrm --protocol grpc --url localhost:8001
    python scripts/triton_client.py --onnx dlrm.onnx --model dlrm --protocol http --url localhost:8000

The batch is valid for the model (row ids inside each table), built from the ONNX file by
``dlrm_deploy.runtime.model_io.sample_inputs``; it goes out in the form the served model takes (whole
batches for the onnxruntime/tensorrt backends, per-sample lengths for the python backend in the
request form its config takes, packed or tables: see ``dlrm_deploy.runtime.triton_client.infer_feeds``). Exit status 0 when every output matches, 1 on a
mismatch, 2 on an error (one line).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def local_reference(onnx_path: str, inputs: dict, device: str) -> dict:
    """Outputs of ONNX Runtime on this machine, with our custom-op library registered."""
    from dlrm_deploy.runtime.ort import ort_session

    sess = ort_session(onnx_path, device=device)
    return dict(zip(sess.output_names, sess.run(inputs)))


def compare(local: dict, served: dict, rtol: float, atol: float) -> tuple[bool, list[str]]:
    """(all match, report lines) for the served outputs against the local ones."""
    ok, lines = True, []
    for name, want in local.items():
        got = served.get(name)
        if got is None or got.shape != want.shape:
            lines.append(f"{name:<16} {str(None if got is None else got.shape):<14} {'-':>14}  NO (shape {want.shape} expected)")
            ok = False
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        match = bool(np.allclose(got, want, rtol=rtol, atol=atol))
        ok &= match
        lines.append(f"{name:<16} {str(tuple(got.shape)):<14} {diff:>14.3e}  {'yes' if match else 'NO'}")
    return ok, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, help="the ONNX file the served model was made from")
    p.add_argument("--model", default="dlrm", help="model name in the repository (default dlrm)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--url", help="host:port (default localhost:8001 for grpc, localhost:8000 for http)")
    p.add_argument("--batch", type=int, default=64, help="samples in the batch (default 64)")
    p.add_argument("--pooling", type=int, default=20, help="lookups per bag, mean (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the local reference runs")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)

    from dlrm_deploy.cli import error_line
    from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs
    from dlrm_deploy.runtime.triton_client import client_module, infer_feeds, model_config, request_spec

    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    try:
        io = describe_onnx(args.onnx)
        inputs = sample_inputs(io, batch=args.batch, pooling=args.pooling, seed=args.seed)
        client = client_module(args.protocol).InferenceServerClient(url=url)
        config = model_config(client, args.model, args.protocol)
        spec = request_spec(config, io)
        form = f"{config.get('backend')} backend" + (f", {spec['form']} request form" if spec else "")
        t0 = time.perf_counter()
        served = infer_feeds(inputs, args.model, io, url=url, protocol=args.protocol, client=client, spec=spec)
        ms = (time.perf_counter() - t0) * 1e3
        local = local_reference(args.onnx, inputs, args.device)
    except Exception as e:  # noqa: BLE001 - a script for people: one line, exit status 2
        print(f"triton_client: error: {error_line(e)}", file=sys.stderr)
        return 2
    ok, lines = compare(local, served, args.rtol, args.atol)
    print(f"{'output':<16} {'shape':<14} {'max abs diff':>14}  match   ({args.protocol} {url}, {form}, {ms:.1f} ms)")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
