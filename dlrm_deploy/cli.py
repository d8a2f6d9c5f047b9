"""The `dlrm-deploy` command line: one entry point, a subcommand per task.

Each subcommand lives in the module that implements it; that module provides
``add_arguments(parser)`` and ``main(args) -> int``. Modules load lazily so that
``dlrm-deploy --help`` works without torch or onnxruntime installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, help)
SUBCOMMANDS = {
    "info": ("dlrm_deploy.info", "version, library paths, CUDA architectures, GPU/ONNX Runtime/TensorRT status (for bug reports)"),
    "demo": ("dlrm_deploy.runtime.demo", "small DLRM: export, run in ONNX Runtime, compare with PyTorch, time"),
    "export": ("dlrm_deploy.export.cli", "export a DLRM (or any nn.EmbeddingBag model) to ONNX with the custom op"),
    "run": ("dlrm_deploy.runtime.run_cli", "run an exported model (ONNX Runtime or a TensorRT plan) and time it"),
    "bench": ("dlrm_deploy.runtime.bench", "benchmarks: `bench kernels` (embedding stage), `bench e2e` (whole DLRM)"),
    "trt-build": ("dlrm_deploy.runtime.trt", "build a TensorRT engine from an exported ONNX file with the plugin"),
    "triton-repo": ("dlrm_deploy.runtime.triton", "write a Triton Inference Server model repository"),
    "triton-serve": ("dlrm_deploy.runtime.triton_server", "serve a model repository with a local tritonserver (nvidia-pytriton)"),
    "triton-bench": ("dlrm_deploy.runtime.triton_bench", "load-test a served model: concurrency sweep over gRPC/HTTP, JSON + PNG"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand named in argv is imported."""
    parser = argparse.ArgumentParser(prog="dlrm-deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


# Exceptions that mean "the input was wrong" (a missing file, a bad option value or model, a missing
# optional package, the runtime refusing the model or its inputs): one line on stderr, exit code 2.
# Anything else is a bug and keeps its traceback. DLRM_DEPLOY_TRACEBACK=1 shows every traceback.
USER_ERRORS = (OSError, ValueError, KeyError, ImportError, NotImplementedError)
_USER_ERROR_PACKAGES = {"onnxruntime", "onnx", "google", "tensorrt", "tensorrt_rtx"}  # their own exception types


def is_user_error(e: BaseException) -> bool:
    """True for exceptions that report a user's mistake rather than a bug (see USER_ERRORS)."""
    return isinstance(e, USER_ERRORS) or type(e).__module__.split(".")[0] in _USER_ERROR_PACKAGES


def error_line(e: BaseException) -> str:
    """One line describing e: its message with newlines and ONNX Runtime's status prefix folded."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    text = " ".join(str(text).split()) or type(e).__name__
    if "[ONNXRuntimeError]" in text:  # "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : message"
        text = text.split(" : ", 3)[-1]
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code (2 for a user error,
    reported as one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("dlrm-deploy: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs right here
        if not is_user_error(e) or os.environ.get("DLRM_DEPLOY_TRACEBACK"):
            raise
        print(f"dlrm-deploy {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
