"""ONNX Runtime sessions for models with the ``dlrm_deploy::EmbeddingBag`` op.

``ort_session(path, device="cuda")`` registers the custom-op library (``libdlrm_deploy_ort.so``),
chooses the execution providers and returns an :class:`OrtSession`: ``run(feeds)`` for numpy in,
numpy out; on the GPU it uses I/O binding, and ``to_device`` + ``run_device`` / ``time_runs`` keep
inputs on the device for benchmarks. ``node_providers(...)`` tells which execution provider ran
each node (from ORT's profiler), e.g. to show that the custom op ran on CUDA, not on the CPU.

bfloat16 tensors have no numpy type: pass them as ``uint16`` arrays of bf16 bits (or as
``onnxruntime.OrtValue``); bfloat16 outputs come back widened to float32 (exactly).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from dlrm_deploy import contract
from dlrm_deploy.libraries import library_path

from .timing import time_torch, time_wall

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
OP_DOMAIN = contract.DOMAIN
OP_TYPE = contract.OP_TYPE

# ONNX TensorProto element type <-> out_dtype of the contract
_OUT_DTYPE_ELEM = {d: i.onnx for d, i in contract.DTYPE_INFO.items() if i.output}
_BF16_ELEM = contract.DTYPE_INFO["bf16"].onnx


def custom_op_library() -> str:
    """Path of the ONNX Runtime custom-op library (``libdlrm_deploy_ort.so``).

    Raises FileNotFoundError (saying how to build it) when it is missing."""
    return library_path("ort")


def _ort():
    import onnxruntime

    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers of the installed onnxruntime package."""
    return list(_ort().get_available_providers())


def cuda_available() -> bool:
    """True when onnxruntime has the CUDA execution provider (a GPU build, e.g. onnxruntime-gpu)."""
    return CUDA_EP in available_providers()


# ------------------------------------------------------------------------------------------------
# Model preparation


def _load_model(model) -> tuple[Any, pathlib.Path | None]:
    """(ModelProto without external data loaded, folder of the model file or None)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the caller's model stays as it was
        return copy, None
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model)), None
    path = pathlib.Path(model)
    return onnx.load(str(path), load_external_data=False), path.resolve().parent


def _typed_names(graph) -> set[str]:
    names = set()
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type != 0:
            names.add(vi.name)
    names.update(init.name for init in graph.initializer)
    return names


def declare_output_types(model_proto) -> int:
    """Adds a value_info with the element type given by ``out_dtype`` for every EmbeddingBag output
    whose type the model does not declare; returns how many were added.

    ONNX Runtime cannot derive a custom op's output type from an attribute, so the type must be in
    the model (the exporter writes it; this fills it in for hand-made or stripped models)."""
    import onnx
    from onnx import helper

    added = 0

    def visit(graph):
        nonlocal added
        typed = _typed_names(graph)
        for node in graph.node:
            for attr in node.attribute:  # subgraphs (If/Loop bodies)
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)
            if node.domain != OP_DOMAIN or node.op_type != OP_TYPE or not node.output or not node.output[0]:
                continue
            if node.output[0] in typed:
                continue
            out_dtype = "fp32"
            for attr in node.attribute:
                if attr.name == "out_dtype":
                    out_dtype = helper.get_attribute_value(attr).decode()
            elem = _OUT_DTYPE_ELEM.get(out_dtype)
            if elem is None:
                continue  # the kernel reports the bad attribute
            graph.value_info.append(helper.make_tensor_value_info(node.output[0], elem, None))
            added += 1

    visit(model_proto.graph)
    return added


# ------------------------------------------------------------------------------------------------
# Sessions


def _session_options(log_severity_level: int | None, profile_prefix: str | None, options: Mapping[str, Any]):
    ort = _ort()
    so = ort.SessionOptions()
    so.register_custom_ops_library(custom_op_library())
    # Tables are initializers of gigabytes: allocated as they are, not through the arena, whose
    # power-of-two growth held about 1.5x the table bytes of GPU memory per session.
    so.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    if log_severity_level is not None:
        so.log_severity_level = int(log_severity_level)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    for key, value in options.items():
        if not hasattr(so, key):
            raise TypeError(f"ort_session: unknown SessionOptions attribute '{key}'")
        setattr(so, key, value)
    return so


def _providers_for(device: str, providers, device_id: int, provider_options) -> list:
    if providers is not None:
        return list(providers)
    if device == "cpu":
        return [CPU_EP]
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(
                "device='cuda' needs onnxruntime with the CUDAExecutionProvider, but this onnxruntime offers "
                f"{available_providers()}: install the GPU build (pip install onnxruntime-gpu, matching your CUDA) "
                "or use device='cpu'")
        # The arena grows by what a run asks for, not to the next power of two (which held about
        # 100 MB more than the activations of the paper model at batch 2048).
        opts = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
        opts.update(provider_options or {})
        return [(CUDA_EP, opts), CPU_EP]
    raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")


def ort_session(path, device: str = "cuda", providers: Sequence | None = None, *, device_id: int = 0,
                provider_options: Mapping[str, Any] | None = None, log_severity_level: int | None = None,
                profile_prefix: str | None = None, cuda_graph: bool | str = False, stream: int | None = None,
                **session_options) -> "OrtSession":
    """Creates an ONNX Runtime session with the dlrm_deploy custom ops registered.

    path: an .onnx file (external data next to it is found), serialized bytes or an onnx.ModelProto.
    device: "cuda" (CUDA execution provider first, CPU for what CUDA lacks; raises RuntimeError when
      onnxruntime has no CUDAExecutionProvider) or "cpu".
    providers: explicit ORT providers list (overrides device's choice; the device still decides
      where run() binds inputs and outputs).
    device_id: GPU ordinal for the CUDA execution provider; provider_options: more CUDA EP options.
    log_severity_level: ORT log level of this session (0 verbose .. 4 fatal).
    profile_prefix: enables ORT's profiler (file name prefix); see node_providers().
    cuda_graph: (device="cuda") capture each input-shape bucket's run into a CUDA graph and replay
      it: inputs are copied into fixed device buffers, outputs read from fixed ones. Bounds checks
      stay on: check=checked errors of a replay are raised by run(). True: dlrm_deploy captures one
      ORT run on the session's stream and launches the graph itself (a replay costs one graph
      launch of host time, not a whole ORT run); without stream= the session gets a stream of its
      own. "ort": ONNX Runtime's own graph mode (enable_cuda_graph), replayed through ORT's run.
    stream: (device="cuda") a CUDA stream handle (an int, e.g. ``torch.cuda.Stream().cuda_stream``)
      for ONNX Runtime's work (the CUDA provider's ``user_compute_stream``); the caller keeps the
      stream alive while the session lives. Lets a caller time the session with CUDA events on its
      own stream (``time_runs(events=True)``), or give it a priority.
    session_options: attributes of onnxruntime.SessionOptions, e.g. intra_op_num_threads=4.
    """
    if cuda_graph not in (False, True, "ort"):
        raise ValueError(f"cuda_graph takes True (dlrm_deploy's capture), 'ort' (ONNX Runtime's) or False, got "
                         f"{cuda_graph!r}")
    if cuda_graph and device != "cuda":
        raise ValueError("cuda_graph needs device='cuda'")
    if cuda_graph == "ort":
        provider_options = dict(provider_options or {}, enable_cuda_graph="1")
    if stream is not None:
        if device != "cuda":
            raise ValueError("stream= needs device='cuda'")
        if not int(stream):
            raise ValueError("stream= takes a created CUDA stream's handle, not 0 (the legacy default stream)")
    own_stream = None
    # Our capture needs to know ORT's stream: one of the session's own (where the CUDA provider is
    # there at all; else the session below says that it is missing).
    if cuda_graph is True and stream is None and CUDA_EP in _ort().get_available_providers():
        own_stream = stream = _graph_call("dd_ort_stream_create", int(device_id))
    if stream is not None:
        provider_options = dict(provider_options or {}, user_compute_stream=str(int(stream)))
    try:
        session = _create_session(path, device, providers, device_id, provider_options, log_severity_level,
                                  profile_prefix, session_options)
    except BaseException:
        if own_stream is not None:
            _graph_api().dd_ort_stream_destroy(own_stream)
        raise
    return OrtSession(session, device=device, device_id=device_id, cuda_graph=cuda_graph, stream=stream,
                      own_stream=own_stream)


def _create_session(path, device, providers, device_id, provider_options, log_severity_level, profile_prefix,
                    session_options):
    ort = _ort()
    provider_list = _providers_for(device, providers, device_id, provider_options)
    so = _session_options(log_severity_level, profile_prefix, session_options)
    proto, folder = _load_model(path)
    patched = declare_output_types(proto) > 0
    if folder is None:
        session = ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=provider_list)
    elif not patched:
        session = ort.InferenceSession(str(path), sess_options=so, providers=provider_list)
    else:
        # The patched model must sit beside its external data (ORT only reads data files from the
        # model's own folder): a temporary file there, removed once the session holds the model.
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{pathlib.Path(path).stem}.", suffix=".onnx", dir=folder)
        except OSError as e:
            raise RuntimeError(f"{path}: the EmbeddingBag output type is not declared in the model and its folder is "
                               f"not writable ({e}); save the model after dlrm_deploy.runtime.ort."
                               "declare_output_types(model)") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            session = ort.InferenceSession(tmp, sess_options=so, providers=provider_list)
        finally:
            os.unlink(tmp)
    if device == "cuda" and providers is None and CUDA_EP not in session.get_providers():
        raise RuntimeError(f"the CUDA execution provider did not load (session providers: {session.get_providers()}); "
                           "check the CUDA/cuDNN libraries onnxruntime-gpu needs (see its warnings above)")
    return session


def _bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _to_numpy(value) -> np.ndarray:
    """numpy copy of a CPU OrtValue (bfloat16 widened to float32)."""
    if value.data_type() == "tensor(bfloat16)":
        shape = tuple(value.shape())
        n = int(np.prod(shape, dtype=np.int64))
        if n == 0:
            return np.zeros(shape, np.float32)
        raw = (ctypes.c_uint16 * n).from_address(value.data_ptr())
        return _bf16_bits_to_float32(np.frombuffer(raw, dtype=np.uint16).copy().reshape(shape))
    return value.numpy()


class OrtSession:
    """A session plus the plumbing to feed it numpy arrays on the CPU or the GPU.

    Attributes: session (the onnxruntime.InferenceSession), input_names, output_names, device
    ("cuda" or "cpu"), device_id."""

    # CUDA graphs captured per session at most (one per input-shape bucket); serving code pads
    # requests to a few bucket sizes (see docs/onnxruntime.md).
    MAX_GRAPHS = 16

    def __init__(self, session, device: str = "cpu", device_id: int = 0, cuda_graph: bool | str = False,
                 stream: int | None = None, own_stream: int | None = None):
        self.session = session
        self.stream = stream
        self._own_stream = own_stream  # made by ort_session for cuda_graph=True: destroyed with the session
        self._launch = None  # (dd_ort_graph_launch, message buffer): set up at the first replay of our graphs
        self.device = device
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, _GraphSlot] = {}
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._input_types = {i.name: i.type for i in session.get_inputs()}
        self._output_types = {o.name: o.type for o in session.get_outputs()}

    def close(self) -> None:
        """Releases the session, its captured CUDA graphs and its own stream (if any); also done
        when the object is collected."""
        graphs, self._graphs = getattr(self, "_graphs", {}), {}
        for slot in graphs.values():
            slot.release()
        self.session = None
        own, self._own_stream = getattr(self, "_own_stream", None), None
        if own is not None:
            _graph_api().dd_ort_stream_destroy(own)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the library may be gone
            pass

    @property
    def providers(self) -> list[str]:
        """Execution providers of the session, in priority order."""
        return self.session.get_providers()

    def _ortvalue(self, name: str, value, device: str):
        ort = _ort()
        if isinstance(value, ort.OrtValue):
            return value
        arr = np.ascontiguousarray(value)
        if self._input_types.get(name) == "tensor(bfloat16)":
            if arr.dtype == np.float32:  # round to nearest even
                u = arr.view(np.uint32)
                arr = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            if arr.dtype != np.uint16:
                raise TypeError(f"input '{name}' is bfloat16: pass uint16 bf16 bits or float32, got {arr.dtype}")
            return self._bf16_value(arr, device)
        return ort.OrtValue.ortvalue_from_numpy(arr, device, self.device_id)

    def _bf16_value(self, bits: np.ndarray, device: str):
        ort = _ort()
        if not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"):
            raise TypeError(f"bfloat16 inputs need onnxruntime >= 1.20 (this is {ort.__version__}); store bfloat16 "
                            "tables as initializers in the model instead")
        host = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, _BF16_ELEM)
        if device == "cpu":
            return host
        try:  # onnx element types in ortvalue_from_shape_and_type: newer onnxruntime releases
            dev = ort.OrtValue.ortvalue_from_shape_and_type(list(bits.shape), _BF16_ELEM, device, self.device_id)
            dev.update_inplace(bits)
            return dev
        except (TypeError, RuntimeError, ValueError):
            return host  # ORT copies it to the device on each run

    def _check_feeds(self, feeds: Mapping[str, Any]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self._input_types]
        if missing or unknown:
            raise KeyError(f"feeds: missing inputs {missing}, unknown inputs {unknown}; the model's inputs are "
                           f"{self.input_names}")

    def to_device(self, feeds: Mapping[str, Any]) -> dict:
        """Copies feeds once to the session's device; returns {name: OrtValue} for run_device."""
        self._check_feeds(feeds)
        return {name: self._ortvalue(name, value, self.device) for name, value in feeds.items()}

    def _binding(self, device_feeds: Mapping[str, Any]):
        binding = self.session.io_binding()
        for name, value in device_feeds.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            # bfloat16 outputs land on the host: numpy has no type for them on the device either
            on_device = self.device if self._output_types.get(name) != "tensor(bfloat16)" else "cpu"
            binding.bind_output(name, on_device, self.device_id if on_device != "cpu" else 0)
        return binding

    def run_device(self, device_feeds: Mapping[str, Any], binding=None) -> list:
        """Runs on inputs already on the device (from to_device); returns the outputs as OrtValues
        where ORT put them (on the GPU for device="cuda"). Pass the binding returned by
        make_binding to reuse it across calls."""
        binding = binding if binding is not None else self._binding(device_feeds)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def make_binding(self, device_feeds: Mapping[str, Any]):
        """An I/O binding of device_feeds and device-side outputs, reusable by run_device."""
        return self._binding(device_feeds)

    def run(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Runs the model on numpy feeds ({input name: array}); returns the outputs as numpy arrays
        in output_names order. On the GPU inputs are copied to the device once per call and outputs
        are bound on the device (I/O binding), then copied back."""
        self._check_feeds(feeds)
        if self.cuda_graph:
            slot = self._graph_slot(feeds)
            for name in self.input_names:
                slot.inputs[name].update_inplace(np.ascontiguousarray(feeds[name]))
            self._replay(slot)
            return [_to_numpy(slot.outputs[n]) for n in self.output_names]
        if self.device == "cpu":
            values = {name: self._ortvalue(name, value, "cpu") for name, value in feeds.items()}
            outputs = self.session.run_with_ort_values(self.output_names, values)
            return [_to_numpy(v) for v in outputs]
        outputs = self.run_device(self.to_device(feeds))
        return [_to_numpy(v) for v in outputs]  # OrtValue.numpy() copies device tensors to the host

    def time_runs(self, feeds: Mapping[str, Any], runs: int = 100, warmup: int = 10, events: bool = False) -> dict:
        """Times `runs` inferences after `warmup` ones, inputs copied to the device once.

        Returns {"median_ms", "min_ms", "max_ms", "runs"} in milliseconds per run. By default
        wall-clock per run, each run including ORT's end-of-run stream synchronisation. events=True
        (a session made with ``stream=``; needs torch): CUDA events on that stream around each run,
        which returns without synchronising (the host then waits for the end event), the way
        PyTorch's rows of ``bench e2e`` are timed: launch work and GPU time, not the wake-up after it."""
        if runs < 1:
            raise ValueError("runs must be >= 1")
        if events and (self.stream is None or self.device != "cuda"):
            raise ValueError("time_runs(events=True) needs a CUDA session made with ort_session(..., stream=...)")
        finish = None
        if self.cuda_graph:
            self._check_feeds(feeds)
            slot = self._graph_slot(feeds)
            for name in self.input_names:
                slot.inputs[name].update_inplace(np.ascontiguousarray(feeds[name]))
            if not events:
                return time_wall(lambda: self._replay(slot), runs, warmup)
            finish = raise_captured_error
            call = lambda: self._replay(slot, synchronize=False, check=False)  # noqa: E731
        else:
            device_feeds = self.to_device(feeds)
            binding = self.make_binding(device_feeds)
            if not events:
                return time_wall(lambda: self.run_device(device_feeds, binding), runs, warmup)
            options = _run_options(None, synchronize=False)
            call = lambda: self.session.run_with_iobinding(binding, options)  # noqa: E731
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(int(self.stream), device=f"cuda:{self.device_id}")):
            result = time_torch(call, runs, warmup, cuda=True)
        torch.cuda.synchronize(self.device_id)
        if finish is not None:
            finish()
        return result

    # -- CUDA graphs --------------------------------------------------------------------------

    def _graph_slot(self, feeds: Mapping[str, Any]) -> "_GraphSlot":
        """The fixed buffers, binding and graph id of feeds' shape bucket (made on first use: one
        run outside any graph tells the output shapes, later runs capture and replay)."""
        ort = _ort()
        arrays = {n: np.ascontiguousarray(feeds[n]) for n in self.input_names}
        if any(self._input_types.get(n) == "tensor(bfloat16)" for n in arrays):
            raise TypeError("cuda_graph=True does not take bfloat16 inputs; store bf16 tables as initializers")
        key = tuple((n, a.shape, a.dtype.str) for n, a in arrays.items())
        slot = self._graphs.get(key)
        if slot is not None:
            return slot
        if len(self._graphs) >= self.MAX_GRAPHS:
            raise RuntimeError(f"cuda_graph: more than {self.MAX_GRAPHS} input-shape buckets; pad requests to a few "
                               "fixed batch sizes (docs/onnxruntime.md)")
        inputs = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", self.device_id) for n, a in arrays.items()}
        probe = self.session.io_binding()
        for n, v in inputs.items():
            probe.bind_ortvalue_input(n, v)
        for n in self.output_names:
            probe.bind_output(n, "cuda", self.device_id)
        self.session.run_with_iobinding(probe, _run_options(-1))  # outside any graph: output shapes
        outputs = {n: ort.OrtValue.ortvalue_from_shape_and_type(v.shape(), _numpy_dtype(v.data_type()), "cuda",
                                                                self.device_id)
                   for n, v in zip(self.output_names, probe.get_outputs())}
        binding = self.session.io_binding()
        for n, v in inputs.items():
            binding.bind_ortvalue_input(n, v)
        for n, v in outputs.items():
            binding.bind_ortvalue_output(n, v)
        slot = _GraphSlot(inputs, outputs, binding, _run_options(len(self._graphs)), len(self._graphs))
        if self.cuda_graph is True:
            slot.exec = self._capture(binding)
        self._graphs[key] = slot
        return slot

    def _capture(self, binding) -> int:
        """One run on the fixed binding, then the same run captured on the session's stream (the
        first run leaves ORT's memory arena holding what the run needs: capture allows no new
        device allocations). Returns the instantiated graph."""
        self.session.run_with_iobinding(binding, _run_options(None))
        stream = int(self.stream)
        _graph_call("dd_ort_graph_begin", stream)
        exec_ = ctypes.c_void_p()
        try:
            self.session.run_with_iobinding(binding, _run_options(None, synchronize=False))
        except Exception as e:
            api, msg = _graph_api(), ctypes.create_string_buffer(512)
            api.dd_ort_graph_end(stream, ctypes.byref(exec_), msg, len(msg))
            api.dd_ort_graph_destroy(exec_)
            raise RuntimeError(f"cuda_graph: ONNX Runtime's run could not be captured into a CUDA graph ({e}); "
                               "cuda_graph='ort' uses ONNX Runtime's own graph mode") from e
        _graph_call("dd_ort_graph_end", stream, ctypes.byref(exec_))
        return exec_.value

    def _replay(self, slot: "_GraphSlot", synchronize: bool = True, check: bool = True) -> None:
        if slot.exec is not None:
            if self._launch is None:  # once per session: a replay's host time is what our graphs save
                self._launch = (_graph_api().dd_ort_graph_launch, ctypes.create_string_buffer(512))
            launch, msg = self._launch
            if launch(slot.exec, self.stream, int(synchronize), msg, len(msg)):
                raise RuntimeError(f"cuda_graph: {msg.value.decode(errors='replace')}")
        else:
            options = slot.run_options if synchronize else _run_options(slot.graph_id, synchronize=False)
            self.session.run_with_iobinding(slot.binding, options)
        if check:
            raise_captured_error()


class _GraphSlot:
    """One shape bucket of a CUDA-graph session: fixed input/output OrtValues, their binding, the
    run options naming its graph in ORT's graph mode, or (dlrm_deploy's capture) its graph."""

    def __init__(self, inputs: dict, outputs: dict, binding, run_options, graph_id: int):
        self.inputs, self.outputs, self.binding, self.run_options = inputs, outputs, binding, run_options
        self.graph_id = graph_id
        self.exec: int | None = None  # cudaGraphExec_t of dlrm_deploy's capture

    def release(self) -> None:
        exec_, self.exec = self.exec, None
        if exec_ is not None:
            _graph_api().dd_ort_graph_destroy(exec_)


def _run_options(graph_id: int | None, synchronize: bool = True):
    """RunOptions naming a CUDA graph (-1: run outside any; None: no graph entry); synchronize=False
    returns from a run once its work is queued on the provider's stream."""
    ro = _ort().RunOptions()
    if graph_id is not None:
        ro.add_run_config_entry("gpu_graph_id", str(graph_id))
    if not synchronize:
        ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
    return ro


def _numpy_dtype(onnx_type: str):
    table = {i.onnx_type: np.dtype(i.numpy).type for i in contract.DTYPE_INFO.values() if i.name != "bf16"}
    table.update({"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64})
    if onnx_type not in table:
        raise TypeError(f"cuda_graph: unsupported output type {onnx_type}")
    return table[onnx_type]


@functools.lru_cache(maxsize=1)
def _graph_api():
    """The op library's CUDA-graph and stream entry points (plugins/ort/cuda_graph.cc)."""
    lib = ctypes.CDLL(custom_op_library())  # the instance ONNX Runtime loaded: same path, same handle
    msg = [ctypes.c_char_p, ctypes.c_size_t]
    lib.dd_ort_stream_create.argtypes, lib.dd_ort_stream_create.restype = [ctypes.c_int, *msg], ctypes.c_void_p
    lib.dd_ort_stream_destroy.argtypes, lib.dd_ort_stream_destroy.restype = [ctypes.c_void_p], None
    lib.dd_ort_graph_begin.argtypes, lib.dd_ort_graph_begin.restype = [ctypes.c_void_p, *msg], ctypes.c_int
    lib.dd_ort_graph_end.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), *msg]
    lib.dd_ort_graph_end.restype = ctypes.c_int
    lib.dd_ort_graph_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, *msg]
    lib.dd_ort_graph_launch.restype = ctypes.c_int
    lib.dd_ort_graph_destroy.argtypes, lib.dd_ort_graph_destroy.restype = [ctypes.c_void_p], None
    return lib


def _graph_call(name: str, *args):
    """Calls one of _graph_api's functions with a message buffer; RuntimeError with its message on
    failure. Returns the stream handle for dd_ort_stream_create."""
    msg = ctypes.create_string_buffer(512)
    rc = getattr(_graph_api(), name)(*args, msg, len(msg))
    if name == "dd_ort_stream_create":
        if not rc:
            raise RuntimeError(f"cuda_graph: {msg.value.decode(errors='replace')}")
        return rc
    if rc != 0:
        raise RuntimeError(f"cuda_graph: {msg.value.decode(errors='replace')}")
    return None


@functools.lru_cache(maxsize=1)
def _captured_error_fn():
    lib = ctypes.CDLL(custom_op_library())  # the instance ONNX Runtime loaded: same path, same handle
    fn = lib.dd_ort_captured_error
    fn.argtypes, fn.restype = [ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int
    return fn


def raise_captured_error() -> None:
    """Raises RuntimeError with the first bad input that a check=checked EmbeddingBag met in the
    last CUDA-graph replay of this process (the op cannot fail a replayed run itself)."""
    buf = ctypes.create_string_buffer(512)
    if _captured_error_fn()(buf, len(buf)) != 0:
        raise RuntimeError(buf.value.decode(errors="replace"))


# ------------------------------------------------------------------------------------------------
# Node placement


def node_providers(path, feeds: Mapping[str, Any], device: str = "cuda", **kw) -> dict[str, dict]:
    """Which execution provider ran each node: runs the model once with ORT's profiler on and
    reads the profile. Returns {node name: {"op_type": ..., "provider": ...}} (node names as ORT
    reports them; unnamed nodes get ORT's generated names). kw goes to ort_session."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, device=device, profile_prefix=os.path.join(tmp, "dd_profile"), **kw)
        sess.run(feeds)
        profile = sess.session.end_profiling()
        with open(profile) as f:
            events = json.load(f)
    placement: dict[str, dict] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args:
            continue
        name = ev.get("name", "")
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        placement[name] = {"op_type": args.get("op_name", ""), "provider": args["provider"]}
    return placement


def op_providers(placement: Mapping[str, Mapping[str, str]], op_type: str = OP_TYPE) -> set[str]:
    """The providers that ran nodes of op_type, from node_providers' result."""
    return {p["provider"] for p in placement.values() if p.get("op_type") == op_type}

