"""`dlrm-deploy run`: runs an exported model on random valid inputs and times it.

    dlrm-deploy run model.onnx [--runtime ort] [--device cpu|cuda] [--batch N] [--runs N]
    dlrm-deploy run model.plan --runtime trt ...

Inputs come from ``model_io.sample_inputs`` (the generator `run --runtime trt`, trt-build, the Triton
tools and the benchmarks share): embedding indices stay inside their tables, offsets are
non-decreasing with `--pooling` lookups per bag on average, other inputs are random with the batch
dimension set to `--batch`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `dlrm-deploy run`."""
    parser.add_argument("model", help="exported .onnx file (--runtime ort) or TensorRT engine (--runtime trt)")
    parser.add_argument("--runtime", choices=["ort", "trt"], default=None,
                        help="ort: ONNX Runtime with the custom-op library; trt: a TensorRT engine "
                             "(default: trt for .plan/.engine files, else ort)")
    parser.add_argument("--onnx", default=None,
                        help="with --runtime trt: the ONNX file the engine was built from, whose inputs are "
                             "generated (default: the engine's name with .onnx)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when onnxruntime has the CUDA execution provider, else cpu")
    parser.add_argument("--batch", type=int, default=128, help="samples per inference (default 128)")
    parser.add_argument("--pooling", type=int, default=None,
                        help="mean lookups per bag (default: from a static indices shape, else 8)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="ORT on CUDA: capture the run into a CUDA graph and time its replays")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


# ------------------------------------------------------------------------------------------------
# Valid inputs: the one generator all runtimes share (model_io.sample_inputs)


def random_inputs(model, batch: int = 128, pooling: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random feeds for an exported model: ``model_io.sample_inputs`` (the same inputs
    ``run --runtime trt`` and the Triton tools generate for the same arguments)."""
    from .model_io import sample_inputs

    return sample_inputs(model, batch=batch, pooling=pooling, seed=seed)


# ------------------------------------------------------------------------------------------------
# The command


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _describe(arr) -> tuple[str, str]:
    return str(list(arr.shape)), str(arr.dtype)


def run_ort(args: argparse.Namespace) -> int:
    """`run --runtime ort`: one checked inference, then timing; prints tables."""
    from . import ort as dd_ort

    device = args.device or ("cuda" if dd_ort.cuda_available() else "cpu")
    kw = {"intra_op_num_threads": args.threads} if args.threads else {}
    if getattr(args, "cuda_graph", False):
        if device != "cuda":
            raise ValueError("--cuda-graph needs --device cuda")
        kw["cuda_graph"] = True
    sess = dd_ort.ort_session(args.model, device=device, **kw)
    feeds = random_inputs(args.model, batch=args.batch, pooling=args.pooling, seed=args.seed)
    outputs = sess.run(feeds)
    print(f"model {args.model}: ONNX Runtime, device {device}, providers {sess.providers}")
    rows = [["tensor", "shape", "dtype"]]
    rows += [[f"in  {n}", *_describe(feeds[n])] for n in sess.input_names]
    rows += [[f"out {n}", *_describe(o)] for n, o in zip(sess.output_names, outputs)]
    print(_table(rows))
    t = sess.time_runs(feeds, runs=args.runs, warmup=args.warmup)
    per_s = args.batch / (t["median_ms"] / 1e3) if t["median_ms"] > 0 else float("inf")
    print()
    print(_table([["batch", "runs", "median ms", "min ms", "max ms", "samples/s"],
                  [str(args.batch), str(t["runs"]), f"{t['median_ms']:.3f}", f"{t['min_ms']:.3f}",
                   f"{t['max_ms']:.3f}", f"{per_s:,.0f}"]]))
    return 0


def _check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the options (a message), or None. Sets args.runtime when not given."""
    if args.batch < 1 or args.runs < 1 or args.warmup < 0:
        return "--batch and --runs must be >= 1, --warmup >= 0"
    if args.pooling is not None and args.pooling < 1:
        return "--pooling must be >= 1"
    if args.runtime is None:
        args.runtime = "trt" if args.model.endswith((".plan", ".engine")) else "ort"
    if args.runtime == "ort" and args.model.endswith((".plan", ".engine")):
        return f"{args.model} is a TensorRT engine: run it with --runtime trt (and --onnx <the exported .onnx>)"
    if args.onnx is not None and args.runtime != "trt":
        return "--onnx is for --runtime trt (the ONNX file a TensorRT engine was built from)"
    return None


def _check_files(args: argparse.Namespace) -> str | None:
    """The first missing input file (a message), or None."""
    if os.path.isdir(args.model):
        return f"{args.model} is a folder; give the exported .onnx file (or a TensorRT .plan)"
    if not os.path.isfile(args.model):
        return f"model file not found: {args.model}"
    if args.onnx is not None and not os.path.isfile(args.onnx):
        return f"--onnx file not found: {args.onnx}"
    return None


def main(args: argparse.Namespace) -> int:
    """Entry point of `dlrm-deploy run`; returns the exit code: 0, or 2 for a user error (a missing or
    unreadable file, a bad option, TensorRT missing, a model or inputs the runtime refuses),
    reported as one line on stderr."""
    from dlrm_deploy.cli import error_line, is_user_error

    try:
        problem = _check_args(args)
        if problem is None and args.runtime == "trt":
            try:
                from .trt import run_plan
            except ImportError as e:
                raise ImportError(f"--runtime trt needs TensorRT support (dlrm_deploy.runtime.trt): {e}") from e
        problem = problem or _check_files(args)
        if problem:
            raise ValueError(problem)
        if args.runtime == "trt":
            return int(run_plan(args.model, args) or 0)
        return run_ort(args)
    except Exception as e:  # noqa: BLE001 - user errors become one line, bugs keep their traceback
        # RuntimeError here: a runtime refusing the device, engine or inputs (e.g. no CUDA provider)
        if not (is_user_error(e) or isinstance(e, RuntimeError)) or os.environ.get("DLRM_DEPLOY_TRACEBACK"):
            raise
        print(f"dlrm-deploy run: error: {error_line(e)}", file=sys.stderr)
        return 2
