"""Triton python-backend model for an exported DLRM (copied as ``<repo>/<name>/1/model.py`` by
``dlrm-deploy triton-repo --backend python``; it runs inside Triton's python-backend stub).

It runs the ONNX file in ONNX Runtime with our custom-op library (the CUDA execution provider for
KIND_GPU instances where onnxruntime has it, else the CPU one) and does Triton's dynamic batching
itself: ``execute`` gets every request the batcher merged, concatenates them exactly, runs the
model once and splits the outputs back per request.

Request format (one request = one query with any number of samples b; Triton's batch dim, the
leading 1, counts requests), in one of two forms (``dlrm_deploy_io.json``'s ``form``):

- every per-sample model input (dense features), shape ``[1, b, ...]`` as in the ONNX file (both forms);
- ``packed`` (few tensors): one ``ids`` input ``[1, N]`` with every table's ids, table-major (table
  0's ids of the b samples, then table 1's, ...; tables numbered across the model's EmbeddingBag
  inputs in order), INT32 unless a table has more rows than INT32 addresses; one ``lengths``
  input ``[1, T*b]`` (INT32, table-major: ids per sample per table); where the model takes
  per-sample weights, one ``weights`` input ``[1, N_w]`` (the ids of the weighted tables, same order);
- ``tables`` (one input per model input): per table (or per EmbeddingBag input pair) ``lengths``
  ``[1, T*b]`` ids per sample (table-major for a fused multi-table input), the ids ``[1, N]``
  (N = sum of lengths) and the per-sample weights ``[1, N]`` where the model has them;
- outputs come back as ``[1, b, ...]``.

Lengths (TorchRec's KeyedJaggedTensor form) concatenate exactly when requests merge; offsets are
derived here. A request that breaks this format gets its own error response. If the merged run fails
(e.g. an id outside its table), every request is run alone, so only the bad ones get the error (the
op's one-line message) and the model stays ready.

The merge/split functions need only numpy; ``triton_python_backend_utils`` is imported by the class.
The file is self-contained: it reads ``dlrm_deploy_io.json`` beside it (written by triton-repo).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import numpy as np

IO_FILE = "dlrm_deploy_io.json"
PROFILE_VAR = "DLRM_DEPLOY_TRITON_PROFILE"  # a folder: each instance appends one JSON line per execute
PINNED_VAR = "DLRM_DEPLOY_TRITON_PINNED"  # 0: merged inputs in pageable memory (default: page-locked on GPU)


class RequestError(ValueError):
    """A request that does not follow the request format (its own error response)."""


def one_line(text: str) -> str:
    """An ONNX Runtime error as one line: the op's message without ORT's status prefix."""
    text = " ".join(str(text).split())
    for marker in ("Status Message: ", "[ONNXRuntimeError] : "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text


def _fetch(get, name):
    """The request's input `name` without Triton's leading 1 (RequestError if missing or not [1, ...])."""
    a = get(name)
    if a is None:
        raise RequestError(f"input '{name}' is missing")
    if a.ndim < 1 or a.shape[0] != 1:
        raise RequestError(f"input '{name}' has shape {list(a.shape)}: its leading dim must be 1 "
                           "(one request; the samples follow)")
    return a[0]


def _dense(get, spec: dict):
    """(samples, {name: [b, ...]}) of the per-sample inputs."""
    dense = {d["name"]: _fetch(get, d["name"]) for d in spec["dense"]}
    sizes = {a.shape[0] if a.ndim else -1 for a in dense.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise RequestError(f"per-sample inputs {sorted(dense)} disagree on the number of samples: "
                           f"{ {k: list(v.shape) for k, v in dense.items()} }")
    return next(iter(sizes)), dense


def parse_request(get, spec: dict) -> dict:
    """The arrays of one request (either form): see parse_tables / parse_packed."""
    return parse_packed(get, spec) if spec.get("form") == "packed" else parse_tables(get, spec)


def fresh(name: str, shape: tuple, dtype) -> np.ndarray:
    """A new array for the merged input `name` (merge's default `take`)."""
    return np.empty(shape, dtype)


def merge(requests: list[dict], spec: dict, take=fresh) -> dict:
    """Model feeds of the parsed requests run as one batch (either form): see merge_tables / merge_packed.
    take(name, shape, dtype) gives the array a merged input is written into (the packed form's)."""
    return merge_packed(requests, spec, take) if spec.get("form") == "packed" else merge_tables(requests, spec)


def parse_packed(get, spec: dict) -> dict:
    """One packed request as ``{"b", "dense", "lengths" [T, b], "ids" [N], "weights" [N_w] or None,
    "bounds": [T+1] (where each table's ids start in "ids"), "wbounds"}``. RequestError when it
    breaks the format: a missing input, a leading dim that is not 1, lengths of the wrong size or
    type, negative, or not adding up to the ids (weights) sent."""
    p = spec["packed"]
    b, dense = _dense(get, spec)
    t = p["tables"]
    lengths = _fetch(get, p["lengths"]).reshape(-1)
    ids = _fetch(get, p["ids"]).reshape(-1)
    if lengths.dtype.kind not in "iu" or ids.dtype.kind not in "iu":
        raise RequestError(f"inputs '{p['lengths']}' and '{p['ids']}' must be integers, not {lengths.dtype} / {ids.dtype}")
    if lengths.size != t * b:
        raise RequestError(f"input '{p['lengths']}' has {lengths.size} entries; {b} samples x {t} table(s) need {t * b}")
    per_table = lengths.reshape(t, b)
    counts = per_table.sum(axis=1, dtype=np.int64)
    if lengths.size and lengths.min() < 0:
        raise RequestError(f"input '{p['lengths']}' has a negative length")
    bounds = [0] + np.cumsum(counts).tolist()
    if bounds[-1] != ids.size:
        raise RequestError(f"input '{p['lengths']}' adds up to {bounds[-1]} ids, but '{p['ids']}' has {ids.size}")
    weights, wbounds = None, bounds
    if p.get("weights"):
        weights = _fetch(get, p["weights"]).reshape(-1)
        if not all(p["weighted"]):
            wbounds = [0] + np.cumsum(counts * np.asarray(p["weighted"], np.int64)).tolist()
        if weights.size != wbounds[-1]:
            raise RequestError(f"input '{p['weights']}' has {weights.size} entries; the weighted tables' lengths "
                               f"add up to {wbounds[-1]}")
    return {"b": b, "dense": dense, "lengths": per_table, "ids": ids, "weights": weights, "counts": counts,
            "bounds": bounds, "wbounds": wbounds}


def _packed_join(requests: list[dict], key: str, bkey: str, tables, dtype, take=fresh) -> np.ndarray:
    """The requests' packed `key` arrays (ids or weights) regrouped table-major over the requests
    (table 0 of every request, then table 1, ...) as one contiguous array of `dtype` from take: one
    copy (the cast included); one request's array passes through uncopied where it has `dtype` already."""
    if len(requests) == 1:
        return np.ascontiguousarray(requests[0][key]).astype(dtype, copy=False)
    parts = [r[key][r[bkey][t]:r[bkey][t + 1]] for t in tables for r in requests]
    out = take(key, (sum(a.size for a in parts),), dtype)
    return np.concatenate(parts, out=out, casting="same_kind") if parts else out


def merge_packed(requests: list[dict], spec: dict, take=fresh) -> dict:
    """Model feeds of packed requests run as one batch: dense rows concatenated; every table's ids
    gathered table-major over the requests into one buffer (cast to the model's index type on the
    way) that each EmbeddingBag input takes a view of; offsets from one cumulative sum per table
    row of the merged [T, B] lengths. Merged dense rows, ids and weights go into take's arrays."""
    p = spec["packed"]
    feeds = {}
    for d in spec["dense"]:
        parts = [r["dense"][d["name"]] for r in requests]
        if len(parts) == 1:
            feeds[d["name"]] = np.ascontiguousarray(parts[0])
        else:
            out = take(d["name"], (sum(a.shape[0] for a in parts),) + parts[0].shape[1:], parts[0].dtype)
            feeds[d["name"]] = np.concatenate(parts, out=out)
    t_all = range(p["tables"])
    if len(requests) == 1:
        lengths, counts = requests[0]["lengths"], requests[0]["counts"]
    else:
        lengths = np.concatenate([r["lengths"] for r in requests], axis=1)  # [T, B], table-major
        counts = np.add.reduce([r["counts"] for r in requests])
    ends = [0] + np.cumsum(counts).tolist()
    ids = _packed_join(requests, "ids", "bounds", t_all, p["index_dtype"] or p["ids_dtype"], take)
    weights = wends = None
    if p.get("weights"):
        weighted = [t for t in t_all if p["weighted"][t]]
        weights = _packed_join(requests, "weights", "wbounds", weighted, p["weights_dtype"], take)
        wends = ends if len(weighted) == len(t_all) else             [0] + np.cumsum(counts * np.asarray(p["weighted"], np.int64)).tolist()
    n = lengths.shape[1]
    rows = None
    if any(bag["tables"] == 1 and bag["offsets"] is not None for bag in spec["bags"]):
        rows = np.empty((lengths.shape[0], n + 1), np.int64)  # exclusive cumsum per table, B+1 with the total
        rows[:, 0] = 0
        np.cumsum(lengths, axis=1, dtype=np.int64, out=rows[:, 1:])
    for bag, (t0, t1) in zip(spec["bags"], p["bag_tables"]):
        feeds[bag["indices"]] = ids[ends[t0]:ends[t1]].astype(bag["indices_dtype"], copy=False)
        if bag.get("weights"):
            feeds[bag["weights"]] = weights[wends[t0]:wends[t1]]
        if bag["offsets"] is None:  # a lengths-form model derives its offsets itself
            feeds[bag["lengths"]] = np.ascontiguousarray(lengths[t0:t1].reshape(-1), dtype=bag["offsets_dtype"])
            continue
        if t1 - t0 == 1:
            offsets = rows[t0]
        else:  # a fused input: offsets run on across its tables
            offsets = np.empty((t1 - t0) * n + 1, np.int64)
            offsets[0] = 0
            np.cumsum(lengths[t0:t1], dtype=np.int64, out=offsets[1:])
        if bag["offsets_dtype"] != "int64" and offsets[-1] > np.iinfo(bag["offsets_dtype"]).max:
            raise ValueError(f"{offsets[-1]} ids in one run do not fit the model's {bag['offsets_dtype']} offsets")
        offsets = offsets.astype(bag["offsets_dtype"], copy=False)
        feeds[bag["offsets"]] = offsets if bag["include_last_offset"] else offsets[:-1]
    return feeds


def parse_tables(get, spec: dict) -> dict:
    """The arrays of one request as ``{"b": samples, "dense": {...}, "bags": [...]}``.

    get(name) returns the request's tensor (numpy) or None. Raises RequestError when the request
    does not follow the format (missing input, leading dim not 1, lengths that do not add up).
    Each bag also gets ``counts``: its ids per table (``[T]``, the split points of a fused input)."""
    b, dense = _dense(get, spec)
    fetch = lambda name: _fetch(get, name)  # noqa: E731
    bags = []
    for bag in spec["bags"]:
        t = bag["tables"]
        lengths = fetch(bag["lengths"]).reshape(-1)
        ids = fetch(bag["indices"]).reshape(-1)
        if lengths.size != t * b:
            raise RequestError(f"input '{bag['lengths']}' has {lengths.size} entries; {b} samples x {t} "
                               f"table(s) need {t * b}")
        counts = lengths.reshape(t, b).sum(axis=1, dtype=np.int64) if b else np.zeros(t, np.int64)
        total = int(counts.sum())
        if total != ids.size or (lengths.size and lengths.min() < 0):
            if lengths.size and lengths.min() < 0:
                raise RequestError(f"input '{bag['lengths']}' has a negative length")
            raise RequestError(f"input '{bag['lengths']}' adds up to {total} ids, but "
                               f"'{bag['indices']}' has {ids.size}")
        weights = fetch(bag["weights"]).reshape(-1) if bag.get("weights") else None
        if weights is not None and weights.size != ids.size:
            raise RequestError(f"input '{bag['weights']}' has {weights.size} entries, '{bag['indices']}' {ids.size}")
        bags.append({"lengths": lengths, "ids": ids, "weights": weights, "counts": counts})
    return {"b": b, "dense": dense, "bags": bags}


def _table_parts(requests: list[dict], k: int, key: str, t: int) -> list[np.ndarray]:
    """The requests' arrays of bag k (ids, weights or lengths) cut table by table, in merged order:
    table 0 of every request, then table 1, ... (each request's array whole when t == 1 or when
    there is one request)."""
    arrays = [r["bags"][k][key] for r in requests]
    if t == 1 or len(requests) == 1:  # one request's fused input is table-major already
        return arrays
    if key == "lengths":
        return [a[table * r["b"]:(table + 1) * r["b"]] for table in range(t) for r, a in zip(requests, arrays)]
    ends = [np.cumsum(r["bags"][k]["counts"]) for r in requests]
    return [a[(e[table - 1] if table else 0):e[table]] for table in range(t) for e, a in zip(ends, arrays)]


def _joined(parts: list[np.ndarray], dtype) -> np.ndarray:
    """The parts concatenated as one contiguous array of `dtype`; a single part that already is one
    is passed through without a copy."""
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0], dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False) if parts[0].dtype != np.dtype(dtype) or \
        any(p.dtype != parts[0].dtype for p in parts) else np.concatenate(parts)


def merge_tables(requests: list[dict], spec: dict) -> dict:
    """Model feeds of tables-form requests run as one batch: dense rows concatenated, each table's ids and
    lengths concatenated (tables stay in order for fused inputs), offsets from the lengths (or the
    lengths themselves for a model in lengths form). One request's arrays go through uncopied
    where their type is already the model's."""
    feeds = {}
    for d in spec["dense"]:
        parts = [r["dense"][d["name"]] for r in requests]
        feeds[d["name"]] = np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts)
    for k, bag in enumerate(spec["bags"]):
        t = bag["tables"]
        feeds[bag["indices"]] = _joined(_table_parts(requests, k, "ids", t), bag["indices_dtype"])
        if bag.get("weights"):
            feeds[bag["weights"]] = _joined(_table_parts(requests, k, "weights", t), requests[0]["bags"][k]["weights"].dtype)
        lengths = _table_parts(requests, k, "lengths", t)
        if bag["offsets"] is None:  # a lengths-form model derives its offsets itself
            feeds[bag["lengths"]] = _joined(lengths, bag["offsets_dtype"])
            continue
        n = sum(a.size for a in lengths)
        offsets = np.empty(n + 1, dtype=bag["offsets_dtype"])  # exclusive cumsum, B+1 with the total
        offsets[0] = 0
        np.cumsum(lengths[0] if len(lengths) == 1 else np.concatenate(lengths), out=offsets[1:])
        feeds[bag["offsets"]] = offsets if bag["include_last_offset"] else offsets[:-1]
    return feeds


def split(outputs: dict, sizes: list[int]) -> list[dict]:
    """Per request ``{output: [1, b, ...]}``: the merged outputs cut at the requests' sample counts."""
    if len(sizes) == 1:
        return [{name: a[None] for name, a in outputs.items()}]
    cuts = np.cumsum(sizes)[:-1]
    per = {name: np.split(a, cuts) for name, a in outputs.items()}
    return [{name: parts[i][None] for name, parts in per.items()} for i in range(len(sizes))]


class PinnedStaging:
    """Page-locked host buffers for merged inputs, one per input, kept from run to run (merge's
    `take`). ONNX Runtime's CUDA provider copies an input to the GPU by DMA from page-locked memory;
    from pageable memory the driver copies it once more on the CPU first. An instance runs one
    execute at a time, and session.run returns after its copies, so a buffer is free again by the
    next merge. cudart: the CUDA runtime (ctypes) the session's provider loaded."""

    def __init__(self, cudart):
        self._cudart = cudart
        self._buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < need:
            if buf is not None:
                self._cudart.cudaHostUnregister(ctypes.c_void_p(buf.ctypes.data))
                del self._buffers[name]
            buf = np.empty(max(need + need // 2, 1 << 20), np.uint8)  # room for larger merges
            if self._cudart.cudaHostRegister(ctypes.c_void_p(buf.ctypes.data), ctypes.c_size_t(buf.nbytes), 0):
                return np.empty(shape, dtype)  # could not lock it: pageable this time
            self._buffers[name] = buf
        return buf[:need].view(dtype).reshape(shape)

    def close(self) -> None:
        for buf in self._buffers.values():
            self._cudart.cudaHostUnregister(ctypes.c_void_p(buf.ctypes.data))
        self._buffers.clear()


def load_cudart():
    """The CUDA runtime library already in the process (ONNX Runtime's CUDA provider loads it), or None."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def make_session(folder: str, spec: dict, kind: str = "CPU", device_id: int = 0, threads: int = 0):
    """An ONNX Runtime session of the model in `folder` with our custom-op library registered."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(os.path.join(folder, spec["library"]))
    if threads:
        so.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if kind == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    elif kind == "GPU":
        print(f"dlrm_deploy model.py: KIND_GPU instance, but onnxruntime {ort.__version__} has no CUDA execution "
              "provider (install onnxruntime-gpu for the stub): running on the CPU", file=sys.stderr, flush=True)
    return ort.InferenceSession(os.path.join(folder, spec["onnx"]), so, providers=providers)


class TritonPythonModel:
    """The python backend's entry points: initialize, execute, finalize."""

    def initialize(self, args):
        """Loads the spec and creates the session (device from the instance kind and id)."""
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, IO_FILE)) as f:
            self.spec = json.load(f)
        params = json.loads(args["model_config"]).get("parameters", {})
        threads = int(params.get("intra_op_num_threads", {}).get("string_value", "0") or 0)
        self.session = make_session(folder, self.spec, args.get("model_instance_kind", "CPU"),
                                    int(args.get("model_instance_device_id", 0) or 0), threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.staging = None
        if self.session.get_providers()[0] == "CUDAExecutionProvider" and os.environ.get(PINNED_VAR, "1") != "0":
            cudart = load_cudart()
            self.staging = PinnedStaging(cudart) if cudart is not None else None
        self.profile, self._last_end = None, None
        if os.environ.get(PROFILE_VAR):
            os.makedirs(os.environ[PROFILE_VAR], exist_ok=True)
            name = f"{args.get('model_instance_name', 'model')}.{os.getpid()}.jsonl".replace("/", "_")
            self.profile = open(os.path.join(os.environ[PROFILE_VAR], name), "a", buffering=1)

    def _run(self, parsed: list[dict], prof: dict | None = None) -> list[dict]:
        t0 = time.perf_counter()
        feeds = merge(parsed, self.spec, self.staging.take if self.staging is not None else fresh)
        t1 = time.perf_counter()
        values = self.session.run(self.output_names, feeds)
        t2 = time.perf_counter()
        out = split(dict(zip(self.output_names, values)), [p["b"] for p in parsed])
        if prof is not None:
            prof["merge"] = t1 - t0
            prof["run"] = t2 - t1
            prof["split"] = time.perf_counter() - t2
        return out

    def execute(self, requests):
        """One response per request: the merged run's rows, or that request's error."""
        import triton_python_backend_utils as pb_utils

        prof = {} if self.profile is not None else None
        t_start = time.perf_counter()
        # One pass over each request's inputs (pb_utils.get_input_tensor_by_name lists them all per name).
        arrays = [{t.name(): t.as_numpy() for t in request.inputs()} for request in requests]
        t_fetched = time.perf_counter()
        results: list = [None] * len(requests)
        good = []
        for i, got in enumerate(arrays):
            try:
                good.append((i, parse_request(got.get, self.spec)))
            except RequestError as e:
                results[i] = str(e)
        t_parsed = time.perf_counter()
        if good:
            try:
                for (i, _), out in zip(good, self._run([p for _, p in good], prof)):
                    results[i] = out
            except Exception:  # noqa: BLE001 - some request is bad: find it by running each alone
                for i, p in good:
                    try:
                        results[i] = self._run([p])[0]
                    except Exception as e:  # noqa: BLE001 - the op's message goes to that request
                        results[i] = one_line(e)
        t_ran = time.perf_counter()
        responses = []
        for r in results:
            if isinstance(r, str):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(r)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in r.items()]))
        if prof is not None:
            t_end = time.perf_counter()
            prof.update(requests=len(requests), samples=sum(p["b"] for _, p in good), fetch=t_fetched - t_start,
                        parse=t_parsed - t_fetched, respond=t_end - t_ran, execute=t_end - t_start,
                        since_last=t_start - self._last_end if self._last_end else None)
            self._last_end = t_end
            self.profile.write(json.dumps(prof) + "\n")
        return responses

    def finalize(self):
        """Drops the session and the page-locked buffers (and closes the profile)."""
        self.session = None
        if self.staging is not None:
            self.staging.close()
        if self.profile is not None:
            self.profile.close()
