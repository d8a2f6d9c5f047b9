"""`dlrm-deploy bench`: the benchmarks of docs/benchmarks.md, one subcommand each.

`bench kernels` (the embedding stage: our variants against torch and FBGEMM) lives in
bench_kernels.py, `bench e2e` (the whole DLRM) in bench_e2e.py.
"""

from __future__ import annotations

import argparse
import sys

from .bench_kernels import add_kernel_arguments, main_kernels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`bench kernels` and `bench e2e` subcommands."""
    sub = parser.add_subparsers(dest="bench", metavar="WHICH")
    sub.required = True
    k = sub.add_parser("kernels", help="embedding stage: our variants vs torch and FBGEMM")
    add_kernel_arguments(k)
    k.set_defaults(_bench=main_kernels)
    e = sub.add_parser("e2e", help="whole DLRM: PyTorch, ONNX Runtime with/without our op, FBGEMM")
    try:
        from . import bench_e2e

        bench_e2e.add_arguments(e)
        e.set_defaults(_bench=bench_e2e.main)
    except ImportError as err:
        e.set_defaults(_bench=lambda a, err=err: sys.exit(f"bench e2e unavailable: {err}"))


def main(args) -> int:
    """Entry point of `dlrm-deploy bench`."""
    return args._bench(args)
