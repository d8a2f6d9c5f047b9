"""The `dlrm-deploy` command line: one entry point, a subcommand per task.

Each subcommand lives in the module that implements it; that module provides
``add_arguments(parser)`` and ``main(args) -> int``. Modules load lazily so that
``dlrm-deploy --help`` works without torch or onnxruntime installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help)
SUBCOMMANDS = {
    "demo": ("dlrm_deploy.runtime.demo", "small DLRM: export, run in ONNX Runtime, compare with PyTorch, time"),
    "export": ("dlrm_deploy.export.cli", "export a DLRM (or any nn.EmbeddingBag model) to ONNX with the custom op"),
    "run": ("dlrm_deploy.runtime.run_cli", "run an exported model (ONNX Runtime or a TensorRT plan) and time it"),
    "bench": ("dlrm_deploy.runtime.bench", "benchmarks: `bench kernels` (embedding stage), `bench e2e` (whole DLRM)"),
    "trt-build": ("dlrm_deploy.runtime.trt", "build a TensorRT engine from an exported ONNX file with the plugin"),
    "triton-repo": ("dlrm_deploy.runtime.triton", "write a Triton Inference Server model repository"),
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
