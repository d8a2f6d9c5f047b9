"""Triton Inference Server support: model repositories (``dlrm-deploy triton-repo``), the public names
of the modules that implement it, and the triton-repo command line.

- triton_repo.py: ``triton_repo(onnx_path, out_dir, backend=...)`` writes ``out_dir/<name>/`` for the
  onnxruntime, tensorrt or python backend (triton_python.py: ONNX Runtime inside the python backend,
  merging ragged requests itself); triton_config.py / triton_readme.py: its config.pbtxt and README.
- triton_validate.py: ``validate_repo`` against Triton's schema (tritonclient's model_config_pb2) and
  the ONNX file.
- triton_client.py: ``triton_infer`` / ``infer_feeds`` (tritonclient); triton_server.py: a real
  tritonserver from nvidia-pytriton (``dlrm-deploy triton-serve``); triton_bench.py: load tests
  (``dlrm-deploy triton-bench``).
- model_io.py: what the ONNX file takes (``describe_onnx``) and valid inputs (``sample_inputs``),
  shared with run, trt-build and the benchmarks.

Batching (docs/triton.md): our ``EmbeddingBag`` inputs are ragged and table-major, so the onnxruntime
and tensorrt configs get ``max_batch_size: 0`` (whole batches per request); the python backend takes
per-sample lengths, which merge exactly, and uses Triton's dynamic batcher; its requests carry all
tables' ids and lengths in one input each (``--request-form packed``, the default) or one input per
model input (``tables``).
"""

from __future__ import annotations

import argparse
import sys

from .model_io import (ModelIO, Tensor, describe_onnx, parse_shape_arg, profile_shapes, sample_inputs,  # noqa: F401
                       shape_for)
from .triton_client import infer_feeds, make_infer_inputs, triton_infer  # noqa: F401
from .triton_config import (BACKENDS, BATCHING, DEFAULT_CUDA_OPTIONS, ORT_LIBRARY,  # noqa: F401
                            TRT_LIBRARY, config_text, perf_analyzer_data, triton_dtype)
from .triton_repo import DEFAULT_PERF_POOLING, triton_repo  # noqa: F401
from .triton_validate import load_config, validate_repo  # noqa: F401

__all__ = ["ModelIO", "Tensor", "describe_onnx", "parse_shape_arg", "profile_shapes", "sample_inputs", "shape_for",
           "infer_feeds", "make_infer_inputs", "triton_infer", "BACKENDS", "BATCHING", "DEFAULT_CUDA_OPTIONS",
           "ORT_LIBRARY", "TRT_LIBRARY", "config_text", "perf_analyzer_data", "triton_dtype", "DEFAULT_PERF_POOLING",
           "triton_repo", "load_config", "validate_repo", "add_arguments", "main"]

_shape_arg = parse_shape_arg  # trtexec-style --shape values


def _kv_arg(text: str):
    """KEY=VALUE -> (key, value)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"'{text}': expected KEY=VALUE")
    return tuple(text.split("=", 1))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrm-deploy triton-repo``."""
    p.add_argument("onnx", help="exported ONNX file (dlrm-deploy export)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="onnxruntime (default), tensorrt, python (ONNX Runtime in the python backend, merging "
                        "ragged requests with dynamic batching) or native (the same in our C++ backend "
                        "\"dlrm_deploy\", without the python backend's per-request cost; docs/triton.md)")
    p.add_argument("--out", required=True, help="model repository folder (created; the model goes in OUT/NAME)")
    p.add_argument("--name", default="dlrm", help="model name (default: dlrm)")
    p.add_argument("--max-batch-size", type=int,
                   help="onnxruntime/tensorrt: most samples per request (default 1024; Triton's max_batch_size stays 0 "
                        "for models with EmbeddingBag inputs); python/native: most requests merged into one execution "
                        "(default 64). See docs/triton.md")
    p.add_argument("--opt-batch-size", type=int, help="samples per request TensorRT tunes for (default: max)")
    p.add_argument("--pooling", type=int,
                   help="lookups per bag (mean) for the TensorRT profile and perf_data.json (default 20)")
    p.add_argument("--instances", type=int, default=1, help="model instances per GPU (default 1; each holds the tables)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind (default gpu)")
    p.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], help="GPU ids, e.g. 0,1 (default: all)")
    p.add_argument("--batching", choices=BATCHING, default="auto",
                   help="auto (default): dynamic batching where the model allows it (python/native: always); "
                        "none: python/native backends with one request per execution (max_batch_size 1, no batcher)")
    p.add_argument("--dynamic-batching", action="store_true",
                   help="require dynamic batching (same as --batching dynamic; an error for ragged inputs)")
    p.add_argument("--preferred-batch-size", type=int, nargs="+", help="dynamic batcher's preferred sizes")
    p.add_argument("--max-queue-delay-us", type=int,
                   help="dynamic batcher's queue delay (default 100; python/native 500)")
    p.add_argument("--lengths", action="store_true",
                   help="onnxruntime: serve the lengths form of the model (per-sample lengths, flattened dense "
                        "inputs) with ragged dynamic batching (docs/triton.md)")
    p.add_argument("--request-form", choices=("packed", "tables"),
                   help="python/native backends: packed (default; native: the only form; dense inputs + one ids [INT32 unless a table has more "
                        "than 2^31 rows], one lengths and one weights input for all tables) or tables (ids and "
                        "lengths per model input); docs/triton.md")
    p.add_argument("--keep-model-inputs", action="store_true",
                   help="python/native backends, packed form: serve the model's lookup inputs as exported (default: one "
                        "ids and one offsets input for a fused lookup node's tables, int32 where they fit; "
                        "docs/triton.md)")
    p.add_argument("--threads", type=int, default=0,
                   help="python/native backends: ONNX Runtime intra-op threads per instance (default 0: ONNX "
                        "Runtime's default; native GPU instances: 1)")
    p.add_argument("--onnxruntime-library", metavar="PATH",
                   help="native backend: the libonnxruntime.so it opens, as the server sees it (default: this "
                        "environment's onnxruntime package's; onnxruntime-gpu for KIND_GPU)")
    p.add_argument("--library", help=f"custom-op ({ORT_LIBRARY}) or plugin ({TRT_LIBRARY}) library "
                                      "(default: the one `make build` wrote)")
    p.add_argument("--plan", help="tensorrt: an engine built on the serving GPU; without it build_plan.sh is written")
    p.add_argument("--serve-root", help="the repository's path as the server sees it (onnxruntime/tensorrt "
                                        "library paths; default /models, the container's usual mount; "
                                        "pass $PWD/REPO for a server on this machine)")
    p.add_argument("--cuda-option", type=_kv_arg, action="append", metavar="KEY=VALUE",
                   help="onnxruntime CUDA execution-provider option (repeatable; replaces the defaults)")
    p.add_argument("--shape", type=_shape_arg, action="append", metavar="NAME=MIN:OPT:MAX",
                   help="tensorrt profile of one input, e.g. indices=1:26624:26624 (repeatable)")
    p.add_argument("--trtexec-arg", action="append", default=[], metavar="ARG",
                   help="extra trtexec flag written into build_plan.sh, e.g. --trtexec-arg=--fp16")
    p.add_argument("--force", action="store_true", help="replace OUT/NAME if it exists")


def main(args: argparse.Namespace) -> int:
    """Runs ``dlrm-deploy triton-repo``; prints the written files."""
    try:
        model_dir = triton_repo(
            args.onnx, args.out, backend=args.backend, name=args.name, max_batch_size=args.max_batch_size,
            opt_batch_size=args.opt_batch_size, pooling=args.pooling, instances=args.instances, kind=args.kind,
            gpus=args.gpus, batching="dynamic" if args.dynamic_batching else args.batching,
            preferred_batch_sizes=args.preferred_batch_size, max_queue_delay_us=args.max_queue_delay_us,
            library=args.library, plan=args.plan, serve_root=args.serve_root,
            cuda_options=dict(args.cuda_option) if args.cuda_option else None,
            shapes=dict(args.shape) if args.shape else None, trtexec_args=args.trtexec_arg,
            overwrite=args.force, threads=args.threads, lengths=args.lengths,
            request_form=args.request_form, packed_inputs=not args.keep_model_inputs,
            onnxruntime_library=args.onnxruntime_library)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"dlrm-deploy triton-repo: error: {e}", file=sys.stderr)
        return 2
    print(f"{'file':<40} {'bytes':>12}")
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            print(f"{str(p.relative_to(model_dir.parent)):<40} {p.stat().st_size:>12}")
    print(f"\nnext: {model_dir / 'README.md'}")
    return 0
