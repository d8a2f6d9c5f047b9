"""TensorRT engines for exported models, through the ``EmbeddingBag`` plugin (libdlrm_deploy_trt.so).

The very ONNX file that runs in ONNX Runtime builds in TensorRT: the parser maps each
``dlrm_deploy::EmbeddingBag`` node to our plugin (name = op type, namespace = domain, version 1).
Row-wise (int8/int4) tables are uint8 in the file, a type TensorRT plugins cannot take: the build
hands TensorRT the same bytes as int32 ``[rows, row_bytes / 4]`` (``trt_onnx_model``), in memory.
Works with either Python module of the same API: ``tensorrt`` (TensorRT) or ``tensorrt_rtx_bindings``
(TensorRT-RTX); pick one with ``module=`` or the environment variable ``DLRM_DEPLOY_TRT_MODULE``.

- ``trt_plugin_library()``: path of the plugin library.
- ``build_trt_engine(onnx_path, engine_path, ...)``: parse, build, serialize (a ``.plan``).
- ``trt_onnx_model(onnx_path)`` / ``save_trt_onnx(onnx_path, out)``: the model as handed to TensorRT
  (for trtexec and polygraphy: ``dlrm-deploy trt-build --save-onnx``).
- ``trt_session(engine_path)``: deserialize and run with numpy inputs (device buffers via torch).
- ``dlrm-deploy trt-build model.onnx --out model.plan`` (``add_arguments``/``main``) and
  ``run_plan`` behind ``dlrm-deploy run model.plan --runtime trt``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np

from dlrm_deploy.libraries import LIBRARIES, library_path

from .timing import summary_ms

TRT_LIBRARY = LIBRARIES["trt"]
# Python modules with TensorRT's API, in the order tried.
MODULES = ("tensorrt", "tensorrt_rtx_bindings")

_modules: dict[str, Any] = {}
_loggers: dict[str, Any] = {}
_plugins: dict[str, Any] = {}  # module name -> plugin library handle


def trt_plugin_library() -> str:
    """Path of libdlrm_deploy_trt.so (FileNotFoundError when it was not built: CMake prints why, e.g.
    no TensorRT headers)."""
    return library_path("trt")


def trt_module(module: str | None = None):
    """The TensorRT Python module: `module` ("tensorrt" or "tensorrt_rtx_bindings"), else
    $DLRM_DEPLOY_TRT_MODULE, else the first of MODULES that imports. ImportError names what was tried."""
    wanted = module or os.environ.get("DLRM_DEPLOY_TRT_MODULE") or None
    names = (wanted,) if wanted else MODULES
    errors = []
    for name in names:
        if name in _modules:
            return _modules[name]
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # ImportError, or a module that fails to load its libraries
            errors.append(f"{name}: {e}")
            continue
        _modules[name] = mod
        return mod
    raise ImportError("no TensorRT Python module importable (" + "; ".join(errors) + ")")


def _module_name(trt) -> str:
    return trt.__name__.split(".")[0]


def trt_logger(trt=None, severity: str = "WARNING"):
    """One logger per module (TensorRT expects the same logger for builder, runtime and parser)."""
    trt = trt or trt_module()
    name = _module_name(trt)
    if name not in _loggers:
        _loggers[name] = trt.Logger(getattr(trt.Logger, severity))
    return _loggers[name]


def load_plugin(trt=None, library: str | os.PathLike | None = None):
    """Registers our plugin with the module's plugin registry (once per module); returns the handle."""
    trt = trt or trt_module()
    name = _module_name(trt)
    if name in _plugins:
        return _plugins[name]
    path = str(library or trt_plugin_library())
    trt_logger(trt)  # the registry logs through the first logger created
    handle = trt.get_plugin_registry().load_library(path)
    if handle is None:
        raise RuntimeError(f"{name}: get_plugin_registry().load_library({path}) failed (see the log above; a "
                           "plugin of the same name, version and namespace may already be registered)")
    _plugins[name] = handle
    return handle


# --------------------------------------------------------------------------------------------------
# Optimization profiles
# --------------------------------------------------------------------------------------------------

def engine_profile(onnx_path, *, min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 2048,
                   pooling: int = 1, max_pooling: int | None = None,
                   shapes: Mapping[str, tuple] | None = None) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """Profile shapes ``{input: (min, opt, max)}`` for the dynamic inputs of an exported model.

    Batch (samples) from min_batch to max_batch, tuned for opt_batch (default max_batch). Index
    counts (lookups): at least 1, T*opt_batch*pooling at opt, T*max_batch*max_pooling at most
    (max_pooling defaults to pooling), where T is the tables of that EmbeddingBag node; offsets
    T*B (+1 with include_last_offset). `shapes` overrides inputs by name.
    """
    from .model_io import describe_onnx, profile_shapes

    return profile_shapes(describe_onnx(onnx_path), max_batch, opt_batch, pooling, dict(shapes or {}),
                          min_batch=min_batch, max_pooling=max_pooling)


def _say(progress):
    t0 = time.perf_counter()

    def say(msg):
        if progress:
            progress(f"[{time.perf_counter() - t0:7.1f}s] {msg}")

    return say


# --------------------------------------------------------------------------------------------------
# The model as TensorRT gets it: row-wise tables as int32 views
# --------------------------------------------------------------------------------------------------

def _node_dtype(node) -> str:
    from dlrm_deploy import contract as C

    for a in node.attribute:
        if a.name == "dtype":
            return a.s.decode() if isinstance(a.s, bytes) else str(a.s)
    return C.FIELD_BY_NAME["dtype"].default


def trt_onnx_model(onnx_path):
    """The exported model with every row-wise (int8/int4) weights initializer of an EmbeddingBag node
    retyped from uint8 ``[rows, row_bytes]`` to int32 ``[rows, row_bytes / 4]``: the same bytes (row
    bytes are a multiple of 16, or dim + 8 with split_scales, dim a multiple of 8), in an element
    type TensorRT can hand a plugin (TensorRT plugins take no uint8 inputs; int8 means quantized
    values to TensorRT). The plugin reads the bytes as they are.

    A fused dot interaction (``dlrm_deploy::DotInteraction``) and fused Linear chains
    (``dlrm_deploy::Mlp``), which TensorRT has no plugin for, are expanded back into standard ops
    (export/interaction.py's unfuse_interaction, export/mlp.py's unfuse_mlp).

    Returns (onnx.ModelProto, number of initializers retyped). External data is not loaded: its
    references stay valid for a model read from or saved into onnx_path's folder. Weights that are
    not an initializer (a graph input, another node's output) cannot be retyped: ValueError.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    from dlrm_deploy import contract as C

    from dlrm_deploy.export.interaction import unfuse_interaction
    from dlrm_deploy.export.mlp import unfuse_mlp

    model = onnx.load(str(onnx_path), load_external_data=False)
    unfuse_interaction(model)
    unfuse_mlp(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    retyped: dict[str, list[int]] = {}
    for node in g.node:
        if node.domain != C.DOMAIN or node.op_type != C.OP_TYPE or _node_dtype(node) not in C.ROWWISE:
            continue
        name = node.input[0]
        if name in retyped:
            continue
        t = inits.get(name)
        if t is None:
            raise ValueError(f"node '{node.name}': its {_node_dtype(node)} weights '{name}' are not an initializer; "
                             "TensorRT can take row-wise tables only as initializers (handed over as int32)")
        if t.data_type == TensorProto.INT32:  # already a view
            continue
        if t.data_type != TensorProto.UINT8 or len(t.dims) != 2 or t.dims[1] % 4:
            raise ValueError(f"node '{node.name}': weights '{name}' must be uint8 [rows, row_bytes] with row_bytes a "
                             f"multiple of 4, got element type {t.data_type} and shape {list(t.dims)}")
        if t.data_location != TensorProto.EXTERNAL and not t.raw_data:
            raw = numpy_helper.to_array(t).astype(np.uint8).tobytes()  # values kept one per int32_data entry
            del t.int32_data[:]
            t.raw_data = raw
        t.data_type = TensorProto.INT32
        t.dims[1] //= 4
        retyped[name] = list(t.dims)
    for vi in list(g.input) + list(g.value_info):  # old-style graphs list initializers as inputs too
        if vi.name in retyped and vi.type.HasField("tensor_type"):
            vi.type.tensor_type.elem_type = TensorProto.INT32
            if vi.type.tensor_type.HasField("shape") and len(vi.type.tensor_type.shape.dim) == 2:
                vi.type.tensor_type.shape.dim[1].dim_value = retyped[vi.name][1]
    return model, len(retyped)


def save_trt_onnx(onnx_path, out_path) -> pathlib.Path:
    """Writes the model as ``build_trt_engine`` hands it to TensorRT (``trt_onnx_model``) to out_path,
    for trtexec or polygraphy. External data is not copied: the new file refers to the exported
    file's ``.data``, so a model with external data must be written into the same folder (ONNX reads
    external data only from inside the model's folder); ValueError otherwise."""
    import onnx
    from onnx import TensorProto

    onnx_path, out_path = pathlib.Path(onnx_path), pathlib.Path(out_path)
    model, _ = trt_onnx_model(onnx_path)
    external = any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    if external and onnx_path.resolve().parent != out_path.resolve().parent:
        raise ValueError(f"{onnx_path} keeps its tables in external data: write the TensorRT copy into the same "
                         f"folder ({onnx_path.resolve().parent}), not {out_path.resolve().parent}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------

def build_trt_engine(onnx_path, engine_path, fp16: bool = False, workspace_mb: int = 1024, *,
                     min_batch: int = 1, opt_batch: int | None = None, max_batch: int = 2048, pooling: int = 1,
                     max_pooling: int | None = None, shapes: Mapping[str, tuple] | None = None,
                     strongly_typed: bool = False, timing_cache: str | os.PathLike | None = None,
                     module: str | None = None, library=None, verbose: bool = False,
                     progress: Callable[[str], None] | None = print) -> pathlib.Path:
    """Builds a TensorRT engine (serialized plan) from an exported ONNX file; returns engine_path.

    fp16: allow fp16 kernels for the dense layers (TensorRT's FP16 builder flag; TensorRT-RTX and
      strongly typed networks take precision from the ONNX types instead). The EmbeddingBag plugin
      always runs in the table and output dtypes of the export.
    workspace_mb: the builder's workspace pool limit, MiB.
    min_batch/opt_batch/max_batch: samples per request of the optimization profile; pooling /
      max_pooling: lookups per bag at opt / max (see ``engine_profile``); shapes: explicit
      ``{input: (min, opt, max)}`` overrides.
    strongly_typed: create the network STRONGLY_TYPED (types exactly as in the ONNX file).
    timing_cache: file to read and update with TensorRT's timing cache.
    module: "tensorrt" or "tensorrt_rtx_bindings" (default: see ``trt_module``). library: plugin
    library (default: the built one). progress: callable for progress lines, or None.
    """
    say = _say(progress)
    trt = trt_module(module)
    logger = trt_logger(trt, "VERBOSE" if verbose else "WARNING")
    load_plugin(trt, library)
    onnx_path, engine_path = pathlib.Path(onnx_path), pathlib.Path(engine_path)
    say(f"{_module_name(trt)} {getattr(trt, '__version__', '?')}: plugin {library or trt_plugin_library()}")

    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path}")
    model, retyped = trt_onnx_model(onnx_path)
    if retyped:
        say(f"{retyped} row-wise weights handed to TensorRT as int32 [rows, row_bytes / 4] (the same bytes)")
    # Row-wise tables as int32 (plugins take no uint8 inputs), fused interaction and Mlp nodes expanded; external
    # data is found beside onnx_path.
    ok = parser.parse(model.SerializeToString(), str(onnx_path))
    del model
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser failed on {onnx_path}:\n  " + "\n  ".join(errors))
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugins = sum(1 for layer in layers if "PLUGIN" in str(layer.type))
    say(f"network: {network.num_layers} layers ({plugins} plugin), {network.num_inputs} inputs, "
        f"{network.num_outputs} outputs")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if hasattr(trt.BuilderFlag, "FP16") and not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            say("fp16: no FP16 builder flag here (strongly typed network): precision follows the ONNX types")
    cache = None
    if timing_cache is not None and hasattr(config, "create_timing_cache"):
        blob = pathlib.Path(timing_cache).read_bytes() if pathlib.Path(timing_cache).exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    prof = engine_profile(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, pooling=pooling,
                          max_pooling=max_pooling, shapes=shapes)
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in prof.items():
        if name not in network_inputs:
            continue
        profile.set_shape(name, lo, opt, hi)
        say(f"profile {name}: min {lo} opt {opt} max {hi}")
    if prof:
        config.add_optimization_profile(profile)

    say("building (TensorRT times kernels now; minutes for large models)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("build_serialized_network failed (the TensorRT log above says why)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(plan)
    if cache is not None:
        pathlib.Path(timing_cache).write_bytes(bytes(cache.serialize()))
    say(f"wrote {engine_path} ({engine_path.stat().st_size / 2**20:.1f} MiB)")
    return engine_path


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

def _torch_dtype(trt, dt):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
             trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "uint8"):
        table[trt.uint8] = torch.uint8
    return table[dt]


class TrtSession:
    """A deserialized engine with one execution context; inputs and outputs as numpy arrays.

    Device buffers come from torch (CUDA); bfloat16 outputs are returned as float32."""

    def __init__(self, engine_path, module: str | None = None, library=None):
        import torch

        self.trt = trt = trt_module(module)
        logger = trt_logger(trt)
        load_plugin(trt, library)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(pathlib.Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def to_device(self, feeds: Mapping[str, Any]) -> dict:
        """numpy (or torch) inputs -> contiguous CUDA tensors of the engine's input types."""
        import torch

        missing = set(self.input_names) - set(feeds)
        if missing:
            raise KeyError(f"missing inputs {sorted(missing)}; the engine takes {self.input_names}")
        out = {}
        for name in self.input_names:
            v = feeds[name]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            out[name] = t.to(device="cuda", dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(name))).contiguous()
        return out

    def bind(self, device_feeds: Mapping[str, Any]) -> list:
        """Sets shapes and addresses; returns the output tensors (allocated here)."""
        import torch

        for name in self.input_names:
            t = device_feeds[name]
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name} has an unresolved shape {shape}")
            t = torch.empty(shape, dtype=_torch_dtype(self.trt, self.engine.get_tensor_dtype(name)), device="cuda")
            self.context.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        return outs

    def execute(self) -> None:
        """Enqueues one inference on the session's stream (no synchronisation)."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed (the TensorRT log above says why)")

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """One inference; returns the outputs in engine order as numpy arrays."""
        import torch

        outs = self.bind(self.to_device(feeds))
        self.execute()
        self.stream.synchronize()
        return [(o.float() if o.dtype == torch.bfloat16 else o).cpu().numpy() for o in outs]

    def time_runs(self, feeds: Mapping[str, Any], runs: int = 100, warmup: int = 10) -> dict:
        """Milliseconds per inference (CUDA events, inputs already on the device): median, min, max."""
        import torch

        device_feeds = self.to_device(feeds)
        self.bind(device_feeds)
        for _ in range(warmup):
            self.execute()
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            self.execute()
            end.record(self.stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return summary_ms(times)


def trt_session(engine_path, module: str | None = None, library=None) -> TrtSession:
    """Loads the plugin, deserializes engine_path and creates an execution context (see TrtSession)."""
    return TrtSession(engine_path, module=module, library=library)


def _onnx_beside(plan: pathlib.Path, onnx) -> pathlib.Path:
    path = pathlib.Path(onnx) if onnx else plan.with_suffix(".onnx")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the plan's inputs are generated from its ONNX file; pass --onnx")
    return path


def run_plan(path, args) -> int:
    """``dlrm-deploy run model.plan --runtime trt``: runs the plan on generated inputs and times it.

    Reads from args (argparse.Namespace; missing attributes take defaults): onnx (the exported
    file the plan was built from; default: the plan's name with .onnx), batch (samples, default
    256), pooling (lookups per bag, 8), runs (100), warmup (10), seed (0), trt_module.
    Prints the output shapes and a timing line; returns 0.
    """
    from .model_io import sample_inputs

    get = lambda name, default: getattr(args, name, None) if getattr(args, name, None) is not None else default  # noqa: E731
    plan = pathlib.Path(path)
    onnx = _onnx_beside(plan, get("onnx", None))
    batch, pooling = get("batch", 256), get("pooling", 8)
    feeds = sample_inputs(onnx, batch=batch, pooling=pooling, seed=get("seed", 0))
    sess = trt_session(plan, module=get("trt_module", None))
    outs = sess.run(feeds)
    for name, o in zip(sess.output_names, outs):
        print(f"output {name}: shape {list(o.shape)} {o.dtype}, mean {float(np.mean(o)):.6g}")
    t = sess.time_runs(feeds, runs=get("runs", 100), warmup=get("warmup", 10))
    print(f"{'runtime':<10} {'batch':>6} {'pooling':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    print(f"{'trt':<10} {batch:>6} {pooling:>8} {t['median_ms']:>10.4f} {t['min_ms']:>8.4f} {t['max_ms']:>8.4f}")
    return 0


# --------------------------------------------------------------------------------------------------
# Command line: dlrm-deploy trt-build
# --------------------------------------------------------------------------------------------------

def _shape_arg(text: str):
    """NAME=MIN:OPT:MAX (trtexec style) -> (name, (min, opt, max))."""
    from .model_io import parse_shape_arg

    return parse_shape_arg(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dlrm-deploy trt-build``."""
    p.add_argument("onnx", help="exported ONNX file (dlrm-deploy export)")
    p.add_argument("--out", help="engine file to write (default: the ONNX file's name with .plan)")
    p.add_argument("--fp16", action="store_true", help="allow fp16 kernels for the dense layers")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit, MiB (default 1024)")
    p.add_argument("--min-batch", type=int, default=1, help="fewest samples per request (default 1)")
    p.add_argument("--opt-batch", type=int, help="samples per request TensorRT tunes for (default: --max-batch)")
    p.add_argument("--max-batch", type=int, default=2048, help="most samples per request (default 2048)")
    p.add_argument("--pooling", type=int, default=1, help="lookups per bag at the opt shape (default 1)")
    p.add_argument("--max-pooling", type=int, help="lookups per bag at the max shape (default: --pooling)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=MIN:OPT:MAX",
                   help="explicit profile for one input, trtexec style (e.g. indices=1:26624:26624); repeatable")
    p.add_argument("--strongly-typed", action="store_true", help="build a strongly typed network")
    p.add_argument("--timing-cache", help="timing cache file to read and update")
    p.add_argument("--module", choices=MODULES, help="TensorRT Python module (default: the first importable)")
    p.add_argument("--plugin", help="plugin library (default: the built libdlrm_deploy_trt.so)")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--save-onnx", metavar="PATH",
                   help="also write the ONNX file as handed to TensorRT (int8/int4 tables as int32 views) for "
                        "trtexec or polygraphy; with --save-onnx alone and no TensorRT module, only this is done")


def main(args: argparse.Namespace) -> int:
    """``dlrm-deploy trt-build``: builds the engine; returns the exit code."""
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.onnx).with_suffix(".plan")
    try:
        if getattr(args, "save_onnx", None):
            print(f"wrote {save_trt_onnx(args.onnx, args.save_onnx)} (the model as TensorRT gets it)")
            try:
                trt_module(args.module)
            except ImportError as e:
                print(f"dlrm-deploy trt-build: no engine built: {e}", file=sys.stderr)
                return 0
        build_trt_engine(args.onnx, out, fp16=args.fp16, workspace_mb=args.workspace_mb, min_batch=args.min_batch,
                         opt_batch=args.opt_batch, max_batch=args.max_batch, pooling=args.pooling,
                         max_pooling=args.max_pooling, shapes=dict(args.shape), strongly_typed=args.strongly_typed,
                         timing_cache=args.timing_cache, module=args.module, library=args.plugin,
                         verbose=args.verbose)
    except (ImportError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"dlrm-deploy trt-build: {e}", file=sys.stderr)
        return 1
    return 0
