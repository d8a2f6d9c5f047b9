"""Client side of a served model (tritonclient, HTTP or gRPC): send model feeds, get model outputs.

A model served by the onnxruntime/tensorrt backends takes the model's own feeds (whole batches); a
python-backend model takes the ragged request format of triton_python.py (per-sample lengths,
leading 1) in its packed or tables form. ``infer_feeds`` reads the served config (which form, which
ids type) and converts both ways, so callers always deal in the model's feeds and outputs.
"""

from __future__ import annotations

import numpy as np

from .triton_config import NATIVE_BACKEND


def client_module(protocol: str):
    """tritonclient.grpc or tritonclient.http (ImportError with the install command when missing)."""
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol '{protocol}' is not grpc or http")
    try:
        return __import__(f"tritonclient.{protocol}", fromlist=["InferInput"])
    except ImportError as e:
        raise ImportError(f"the Triton client needs `pip install tritonclient[{protocol}]` ({e})") from e


def make_infer_inputs(inputs: dict[str, np.ndarray], protocol: str = "grpc") -> list:
    """tritonclient ``InferInput`` objects holding `inputs` (datatype from the numpy dtype)."""
    from tritonclient.utils import np_to_triton_dtype

    tc = client_module(protocol)
    out = []
    for name, a in inputs.items():
        a = np.ascontiguousarray(a)
        x = tc.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        x.set_data_from_numpy(a)
        out.append(x)
    return out


def model_config(client, model: str, protocol: str) -> dict:
    """The served model's configuration as a dict (HTTP's JSON form for both protocols)."""
    cfg = client.get_model_config(model, as_json=True) if protocol == "grpc" else client.get_model_config(model)
    return cfg.get("config", cfg)


def triton_infer(inputs: dict[str, np.ndarray], model: str, url: str = "localhost:8001",
                 protocol: str = "grpc", outputs: list[str] | None = None, timeout_s: float = 60.0, client=None):
    """Sends one request as it stands to a running Triton server and returns ``{output: array}``.
    ``url`` is host:port (8001 gRPC, 8000 HTTP by default)."""
    tc = client_module(protocol)
    client = client or tc.InferenceServerClient(url=url)
    if not client.is_model_ready(model):
        raise RuntimeError(f"model '{model}' is not ready on {url} ({protocol})")
    if outputs is None:
        meta = client.get_model_metadata(model, as_json=True) if protocol == "grpc" else client.get_model_metadata(model)
        outputs = [o["name"] for o in meta["outputs"]]
    requested = [tc.InferRequestedOutput(n) for n in outputs]
    kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
    result = client.infer(model, make_infer_inputs(inputs, protocol), outputs=requested, **kwargs)
    return {n: result.as_numpy(n) for n in outputs}


def takes_ragged_requests(config: dict) -> bool:
    """True for a model that takes the ragged request format: the python backend's or our native
    backend's (``backend: "dlrm_deploy"``)."""
    return config.get("backend") in ("python", NATIVE_BACKEND)


def request_spec(config: dict, onnx_or_io) -> dict | None:
    """The request spec (triton_python.io_spec) of a served python- or native-backend model, in the form its
    config takes (packed or tables); None for the other backends (the model's own feeds)."""
    if not takes_ragged_requests(config):
        return None
    from .model_io import ModelIO, describe_onnx
    from .triton_python import served_spec

    io = onnx_or_io if isinstance(onnx_or_io, ModelIO) else describe_onnx(onnx_or_io)
    return served_spec(io, config)


def infer_feeds(feeds: dict[str, np.ndarray], model: str, onnx_or_io, url: str, protocol: str = "grpc",
                timeout_s: float = 60.0, client=None, spec: dict | None = None) -> dict[str, np.ndarray]:
    """Sends the model feeds `feeds` (e.g. from sample_inputs) in the form the served model takes and
    returns the model's outputs ``{name: [b, ...]}``, whatever the backend and request form. `spec`:
    the served request spec when known (request_spec), else read from the server."""
    tc = client_module(protocol)
    client = client or tc.InferenceServerClient(url=url)
    if spec is None:
        spec = request_spec(model_config(client, model, protocol), onnx_or_io)
    if spec is None:
        return triton_infer(feeds, model, url, protocol, timeout_s=timeout_s, client=client)
    from .triton_python import request_from_feeds

    out = triton_infer(request_from_feeds(feeds, spec), model, url, protocol, outputs=spec["outputs"],
                       timeout_s=timeout_s, client=client)
    return {k: v[0] for k, v in out.items()}
