"""dlrm_deploy::EmbeddingBag in ONNX Runtime (libdlrm_deploy_ort.so) against a numpy reference of
the op contract (docs/op_contract.md), on the CPU execution provider and, where a GPU and
onnxruntime's CUDA execution provider exist, on CUDA."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from dlrm_deploy import contract  # noqa: E402
from dlrm_deploy.runtime import ort as dd_ort  # noqa: E402

try:
    LIB = dd_ort.custom_op_library()
except FileNotFoundError as e:  # the build skipped the target (it says why)
    pytest.skip(f"ONNX Runtime op library not built: {e}", allow_module_level=True)


def _gpu_reason() -> str | None:
    if not dd_ort.cuda_available():
        return "onnxruntime has no CUDAExecutionProvider (CPU-only onnxruntime)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


GPU_REASON = _gpu_reason()
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")

WEIGHT_ELEM = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
               "int8": TensorProto.UINT8, "int4": TensorProto.UINT8}
OUT_ELEM = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
INDEX_ELEM = {"int32": TensorProto.INT32, "int64": TensorProto.INT64}
ROWS = [7, 40, 300]
DIM = 8
BATCH = 5


# --------------------------------------------------------------------------------------------
# Model, data and the numpy reference


def make_model(attrs: dict, dtype: str = "fp32", index: str = "int64", psw: bool = False,
               out_dtype: str | None = None, weights_initializer: np.ndarray | None = None,
               declare_output: bool = True, shapes: bool = True) -> bytes:
    """One EmbeddingBag node: inputs weights (graph input unless given as an initializer), indices,
    offsets [, per_sample_weights]; output 'out'. shapes=False leaves the inputs' ranks unknown to
    ORT, so that the kernel's own shape checks are what rejects bad shapes."""
    out_dtype = out_dtype or attrs.get("out_dtype", "fp32")

    def dims(*names):
        return list(names) if shapes else None

    inputs = [helper.make_tensor_value_info("indices", INDEX_ELEM[index], dims("N")),
              helper.make_tensor_value_info("offsets", INDEX_ELEM[index], dims("O"))]
    initializers = []
    if weights_initializer is None:
        inputs.insert(0, helper.make_tensor_value_info("weights", WEIGHT_ELEM[dtype], dims("R", "C")))
    else:
        tensor = helper.make_tensor("weights", WEIGHT_ELEM[dtype], weights_initializer.shape,
                                    weights_initializer.tobytes(), raw=True)
        initializers.append(tensor)
    names = ["weights", "indices", "offsets"]
    if psw:
        inputs.append(helper.make_tensor_value_info("per_sample_weights", TensorProto.FLOAT, dims("N")))
        names.append("per_sample_weights")
    node = helper.make_node(contract.OP_TYPE, names, ["pooled"], domain=contract.DOMAIN, name="emb", **attrs)
    nodes = [node]
    if declare_output:
        out_name = "pooled"
    else:  # the node's output is an intermediate with no declared type
        nodes.append(helper.make_node("Identity", ["pooled"], ["out"], name="identity"))
        out_name = "out"
    outputs = [helper.make_tensor_value_info(out_name, OUT_ELEM[out_dtype], dims("B", "TD"))]
    graph = helper.make_graph(nodes, "embedding_bag", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(contract.DOMAIN, contract.OP_VERSION)])
    model.ir_version = 8  # loadable by every ORT release the library supports
    return model.SerializeToString()


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def make_weights(dtype: str, total_rows: int, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(stored table blob, its values decoded to float32 [total_rows, dim])."""
    values = rng.standard_normal((total_rows, dim)).astype(np.float32)
    if dtype == "fp32":
        return values, values
    if dtype == "fp16":
        stored = values.astype(np.float16)
        return stored, stored.astype(np.float32)
    if dtype == "bf16":
        stored = f32_to_bf16_bits(values)
        return stored, bf16_bits_to_f32(stored)
    if dtype == "int4":  # random codes two per byte (even column low), fp32 scale and bias behind them
        codes = rng.integers(0, 16, size=(total_rows, dim), dtype=np.uint8)
        scale = rng.uniform(0.01, 0.3, size=total_rows).astype(np.float32)
        bias = rng.uniform(-1, 1, size=total_rows).astype(np.float32)
        stored = np.zeros((total_rows, contract.int4_row_bytes(dim)), np.uint8)
        h = dim // 2
        stored[:, :h] = codes[:, 0::2] | (codes[:, 1::2] << 4)
        stored[:, h:h + 4] = scale.view(np.uint8).reshape(-1, 4)
        stored[:, h + 4:h + 8] = bias.view(np.uint8).reshape(-1, 4)
        return stored, (scale[:, None] * codes.astype(np.float32) + bias[:, None]).astype(np.float32)
    row_bytes = contract.int8_row_bytes(dim)
    codes = rng.integers(0, 256, size=(total_rows, dim), dtype=np.uint8)
    scale = rng.uniform(0.001, 0.02, size=total_rows).astype(np.float32)
    bias = rng.uniform(-1, 1, size=total_rows).astype(np.float32)
    stored = np.zeros((total_rows, row_bytes), np.uint8)
    stored[:, :dim] = codes
    stored[:, dim:dim + 4] = scale.view(np.uint8).reshape(-1, 4)
    stored[:, dim + 4:dim + 8] = bias.view(np.uint8).reshape(-1, 4)
    return stored, (scale[:, None] * codes.astype(np.float32) + bias[:, None]).astype(np.float32)


def make_bags(rows: list[int], batch: int, rng, index: str = "int64", include_last_offset: int = 0,
              lengths: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Table-major indices and offsets; bag lengths include an empty bag, a bag of one and a long bag."""
    itype = np.int32 if index == "int32" else np.int64
    base = lengths or [0, 1, 150, 3, 9]
    idx, offsets = [], []
    pos = 0
    for t, r in enumerate(rows):
        lens = [base[(b + t) % len(base)] for b in range(batch)]
        for n in lens:
            offsets.append(pos)
            idx.extend(rng.integers(0, r, size=n).tolist())
            pos += n
    if include_last_offset:
        offsets.append(pos)
    return np.array(idx, itype), np.array(offsets, itype)


def global_rows(rows: list[int], pinned_rows: int = 0, hot_first: int = 0) -> list[np.ndarray]:
    """For each table, the packed blob's row of each local id (plain or hot-first layout)."""
    T = len(rows)
    split = pinned_rows if hot_first else 0
    maps, cold = [], T * split
    for t, r in enumerate(rows):
        ids = np.arange(r)
        maps.append(np.where(ids < split, t * split + ids, cold + ids - split))
        cold += r - split
    return maps


def reference(values: np.ndarray, indices, offsets, rows, mode="sum", psw=None, include_last_offset=0,
              pinned_rows=0, hot_first=0, out_dtype="fp32") -> np.ndarray:
    """The contract: per bag, fp32 sums in index order (sequential, like np.cumsum), mean divides by
    the bag length (empty bag -> zeros); output [B, T*D] rounded to out_dtype (nearest even)."""
    T, D = len(rows), values.shape[1]
    n_off = len(offsets)
    B = (n_off - include_last_offset) // T
    N = len(indices)
    maps = global_rows(rows, pinned_rows, hot_first)
    out = np.zeros((B, T * D), np.float32)
    for t in range(T):
        for b in range(B):
            bag = t * B + b
            start = int(offsets[bag])
            end = int(offsets[bag + 1]) if bag + 1 < n_off else N
            if end <= start:
                continue
            vecs = values[maps[t][np.asarray(indices[start:end], np.int64)]]
            if psw is not None:
                vecs = vecs * psw[start:end, None].astype(np.float32)
            acc = np.cumsum(vecs, axis=0, dtype=np.float32)[-1]
            if mode == "mean":
                acc = acc / np.float32(end - start)
            out[b, t * D:(t + 1) * D] = acc
    if out_dtype == "fp16":
        return out.astype(np.float16)
    if out_dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(out))
    return out


def session(model: bytes, device: str = "cpu", **kw) -> dd_ort.OrtSession:
    return dd_ort.ort_session(model, device=device, **kw)


def check(out: np.ndarray, ref: np.ndarray, exact: bool, out_dtype: str = "fp32"):
    assert out.shape == ref.shape
    if out_dtype == "fp16":
        assert out.dtype == np.float16
    else:
        assert out.dtype == np.float32
    if exact:
        np.testing.assert_array_equal(out, ref)
    else:
        tol = {"fp32": 2e-5, "fp16": 2e-3, "bf16": 1.6e-2}[out_dtype]
        np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), rtol=tol, atol=tol)


def run_case(device, dtype, mode, include_last_offset, index, psw=False, out_dtype="fp32", pinned_rows=0,
             hot_first=0, seed=0, batch=BATCH, lengths=None, bf16_input=False):
    rng = np.random.default_rng(seed)
    attrs = dict(table_rows=ROWS, dim=DIM, dtype=dtype, mode=mode, include_last_offset=include_last_offset,
                 out_dtype=out_dtype, pinned_rows=pinned_rows, hot_first=hot_first)
    stored, values = make_weights(dtype, sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, batch, rng, index, include_last_offset, lengths)
    feeds = {"indices": indices, "offsets": offsets}
    # bfloat16 tables as initializers (numpy has no bfloat16; the usual deployment anyway)
    init = stored if dtype == "bf16" and not bf16_input else None
    if init is None:
        feeds["weights"] = stored
    weights = rng.uniform(0.5, 2.0, size=len(indices)).astype(np.float32) if psw else None
    if psw:
        feeds["per_sample_weights"] = weights
    sess = session(make_model(attrs, dtype, index, psw=psw, weights_initializer=init), device)
    (out,) = sess.run(feeds)
    ref = reference(values, indices, offsets, ROWS, mode, weights, include_last_offset, pinned_rows, hot_first,
                    out_dtype)
    # The CPU op adds in index order (exact against this reference; int8 dequantisation and per-sample
    # weights use FMAs). The CUDA kernel may split a bag over lane groups when a row is short (see
    # embedding_bag_cuda.cu; test_core_gpu.py checks where it is bit-exact), so CUDA gets a tolerance.
    check(out, ref, exact=(device == "cpu" and dtype not in contract.ROWWISE and not psw), out_dtype=out_dtype)
    return sess, feeds, ref


# --------------------------------------------------------------------------------------------
# CPU


@pytest.mark.parametrize("index", ["int64", "int32"])
@pytest.mark.parametrize("include_last_offset", [0, 1])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_cpu_matches_reference(dtype, mode, include_last_offset, index):
    run_case("cpu", dtype, mode, include_last_offset, index)


@pytest.mark.parametrize("index", ["int64", "int32"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_cpu_per_sample_weights(dtype, index):
    run_case("cpu", dtype, "sum", 0, index, psw=True)


@pytest.mark.parametrize("out_dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_cpu_out_dtype(dtype, out_dtype):
    run_case("cpu", dtype, "mean", 1, "int64", out_dtype=out_dtype)


@pytest.mark.skipif(not hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type"),
                    reason="bfloat16 inputs from Python need onnxruntime >= 1.20")
def test_cpu_bf16_weights_as_input():
    run_case("cpu", "bf16", "sum", 0, "int64", bf16_input=True)


def test_cpu_hot_first_layout():
    run_case("cpu", "fp32", "sum", 0, "int64", pinned_rows=3, hot_first=1)


def test_cpu_all_bags_of_one_and_all_empty():
    run_case("cpu", "fp32", "sum", 1, "int64", lengths=[1])
    run_case("cpu", "fp16", "mean", 0, "int32", lengths=[0])


def test_cpu_empty_batch():
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM, include_last_offset=1)))
    (out,) = sess.run({"weights": np.zeros((sum(ROWS), DIM), np.float32), "indices": np.zeros(0, np.int64),
                       "offsets": np.zeros(1, np.int64)})
    assert out.shape == (0, len(ROWS) * DIM)


def test_cpu_weights_initializer_and_undeclared_output_type():
    """The usual deployment: tables as initializers; the node's output typed by ort_session from
    out_dtype when the model does not declare it."""
    rng = np.random.default_rng(3)
    stored, values = make_weights("fp16", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    attrs = dict(table_rows=ROWS, dim=DIM, dtype="fp16", out_dtype="fp16")
    model = make_model(attrs, "fp16", weights_initializer=stored, declare_output=False)
    sess = session(model)
    assert sess.input_names == ["indices", "offsets"]
    (out,) = sess.run({"indices": indices, "offsets": offsets})
    check(out, reference(values, indices, offsets, ROWS, out_dtype="fp16"), exact=True, out_dtype="fp16")


def test_cpu_time_runs_and_placement():
    rng = np.random.default_rng(4)
    stored, _ = make_weights("fp32", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    model = make_model(dict(table_rows=ROWS, dim=DIM))
    feeds = {"weights": stored, "indices": indices, "offsets": offsets}
    t = session(model).time_runs(feeds, runs=5, warmup=1)
    assert t["runs"] == 5 and 0 <= t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    placement = dd_ort.node_providers(model, feeds, device="cpu")
    assert dd_ort.op_providers(placement) == {"CPUExecutionProvider"}, placement


# --------------------------------------------------------------------------------------------
# Bad input: an ORT error with a readable message, and the session keeps working


@pytest.fixture(scope="module")
def good():
    rng = np.random.default_rng(7)
    stored, values = make_weights("fp32", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    feeds = {"weights": stored, "indices": indices, "offsets": offsets}
    return feeds, reference(values, indices, offsets, ROWS)


def _bad_feeds(feeds, what):
    f = dict(feeds)
    idx = f["indices"].copy()
    off = f["offsets"].copy()
    if what == "index_out_of_range":
        idx[off[BATCH]] = ROWS[1]  # first lookup of table 1: one past its last row
        f["indices"] = idx
    elif what == "negative_index":
        idx[-1] = -1
        f["indices"] = idx
    elif what == "decreasing_offsets":
        off[2] = off[3] + 1  # bag 2 ends before it starts
        f["offsets"] = off
    elif what == "offsets_past_end":
        off[-1] = len(idx) + 5
        f["offsets"] = off
    elif what == "offsets_count":
        f["offsets"] = off[:-1]
    elif what == "weights_shape":
        f["weights"] = f["weights"][:-1]
    elif what == "indices_rank":
        f["indices"] = idx.reshape(1, -1)
    elif what == "indices_dtype":
        f["indices"] = idx.astype(np.int32)
    elif what == "weights_dtype":
        f["weights"] = f["weights"].astype(np.float64)
    return f


BAD_FEEDS = {
    "index_out_of_range": "out of range for table 1",
    "negative_index": "index -1 .* out of range",
    "decreasing_offsets": "non-decreasing",
    "offsets_past_end": "past the end",
    "offsets_count": "offsets has",
    "weights_shape": "weights have shape",
    "indices_rank": "indices must be 1-D",
    "indices_dtype": "(?i)type",
    "weights_dtype": "(?i)type",
}


@pytest.mark.parametrize("what", list(BAD_FEEDS))
def test_cpu_bad_input_is_an_error_and_the_session_survives(good, what):
    feeds, ref = good
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM), shapes=False), log_severity_level=4)
    with pytest.raises(Exception, match=BAD_FEEDS[what]) as info:
        sess.run(_bad_feeds(feeds, what))
    if what not in ("indices_dtype", "weights_dtype"):  # those are ORT's own input checks
        assert "dlrm_deploy::EmbeddingBag" in str(info.value)
    (out,) = sess.run(feeds)
    np.testing.assert_array_equal(out, ref)


def test_cpu_bad_per_sample_weights(good):
    feeds, _ = good
    f = dict(feeds, per_sample_weights=np.ones(len(feeds["indices"]) - 1, np.float32))
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM), psw=True, shapes=False), log_severity_level=4)
    with pytest.raises(Exception, match="per_sample_weights must have shape"):
        sess.run(f)
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM, mode="mean"), psw=True), log_severity_level=4)
    with pytest.raises(Exception, match="only supported with mode=sum"):
        sess.run(dict(feeds, per_sample_weights=np.ones(len(feeds["indices"]), np.float32)))


BAD_MODELS = {
    "mode": (dict(table_rows=ROWS, dim=DIM, mode="max"), {}, "mode='max' is not one of sum|mean"),
    "missing_dim": (dict(table_rows=ROWS), {}, "'dim' .* is required"),
    "dim_type": (dict(table_rows=ROWS, dim="8"), {}, "'dim' must be of type int, got string"),
    "table_rows": (dict(table_rows=[5, 0], dim=DIM), {}, "table_rows\\[1\\] = 0 must be positive"),
    "dtype_name": (dict(table_rows=ROWS, dim=DIM, dtype="int2"), {}, "dtype='int2' is not one of"),
    "dtype_vs_weights": (dict(table_rows=ROWS, dim=DIM, dtype="fp32"), dict(dtype="fp16"),
                         "weights are float16 but attribute dtype='fp32'"),
    "out_dtype_vs_output": (dict(table_rows=ROWS, dim=DIM, out_dtype="fp32"), dict(out_dtype="fp16"),
                            "declares the output as float16"),
    "int8_dim": (dict(table_rows=ROWS, dim=6, dtype="int8"), dict(dtype="int8"), "divisible by 4"),
    "int4_dim": (dict(table_rows=ROWS, dim=12, dtype="int4"), dict(dtype="int4"), "int4 row-wise tables need dim divisible by 8"),
    "check_name": (dict(table_rows=ROWS, dim=DIM, check="sometimes"), {}, "check='sometimes' is not one of"),
}


@pytest.mark.parametrize("what", list(BAD_MODELS))
def test_cpu_bad_attributes_fail_session_creation(good, what):
    attrs, model_kw, message = BAD_MODELS[what]
    with pytest.raises(Exception, match=message):
        session(make_model(attrs, **model_kw), log_severity_level=4)
    feeds, ref = good  # the process carries on
    (out,) = session(make_model(dict(table_rows=ROWS, dim=DIM))).run(feeds)
    np.testing.assert_array_equal(out, ref)


def test_cpu_unsupported_input_types_fail_session_creation():
    with pytest.raises(Exception, match="(?i)EmbeddingBag"):
        session(_model_with_input_types(TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT64),
                log_severity_level=4)
    with pytest.raises(Exception, match="(?i)EmbeddingBag"):
        session(_model_with_input_types(TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64), log_severity_level=4)


def _model_with_input_types(w, i, o) -> bytes:
    inputs = [helper.make_tensor_value_info("weights", w, None), helper.make_tensor_value_info("indices", i, None),
              helper.make_tensor_value_info("offsets", o, None)]
    node = helper.make_node(contract.OP_TYPE, ["weights", "indices", "offsets"], ["out"], domain=contract.DOMAIN,
                            table_rows=ROWS, dim=DIM)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(contract.DOMAIN, 1)])
    model.ir_version = 8
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------
# GPU (CUDA execution provider)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("index", ["int64", "int32"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_cuda_matches_reference(dtype, mode, index):
    run_case("cuda", dtype, mode, 1, index)
    run_case("cuda", dtype, mode, 0, index, seed=1)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_cuda_per_sample_weights_and_out_dtypes(dtype):
    run_case("cuda", dtype, "sum", 0, "int64", psw=True)
    run_case("cuda", dtype, "mean", 1, "int32", out_dtype="fp16")
    run_case("cuda", dtype, "sum", 0, "int64", out_dtype="bf16")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["baseline", "occupancy", "prefetch", "l2pin", "combined", "auto"])
def test_cuda_variants(variant):
    rng = np.random.default_rng(11)
    attrs = dict(table_rows=ROWS, dim=DIM, variant=variant, pinned_rows=4, hot_first=1, prefetch_distance=4)
    stored, values = make_weights("fp32", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    (out,) = session(make_model(attrs), "cuda").run({"weights": stored, "indices": indices, "offsets": offsets})
    np.testing.assert_allclose(out, reference(values, indices, offsets, ROWS, pinned_rows=4, hot_first=1),
                               rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.gpu
def test_cuda_node_runs_on_cuda_execution_provider():
    rng = np.random.default_rng(5)
    stored, _ = make_weights("fp16", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    model = make_model(dict(table_rows=ROWS, dim=DIM, dtype="fp16"), "fp16")
    placement = dd_ort.node_providers(model, {"weights": stored, "indices": indices, "offsets": offsets},
                                      device="cuda")
    assert dd_ort.op_providers(placement) == {"CUDAExecutionProvider"}, placement


@gpu
@pytest.mark.gpu
def test_cuda_device_resident_timing():
    rng = np.random.default_rng(6)
    stored, values = make_weights("fp32", sum(ROWS), DIM, rng)
    indices, offsets = make_bags(ROWS, BATCH, rng)
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM)), "cuda")
    feeds = {"weights": stored, "indices": indices, "offsets": offsets}
    dev = sess.to_device(feeds)
    (out,) = sess.run_device(dev)
    assert out.device_name().lower() == "cuda"
    check(out.numpy(), reference(values, indices, offsets, ROWS), exact=False)
    t = sess.time_runs(feeds, runs=5, warmup=2)
    assert t["min_ms"] > 0


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("what", [k for k in BAD_FEEDS if k not in ("indices_dtype", "weights_dtype")])
def test_cuda_bad_input_is_an_error_and_the_session_survives(good, what):
    feeds, ref = good
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM), shapes=False), "cuda", log_severity_level=4)
    with pytest.raises(Exception, match=BAD_FEEDS[what]):
        sess.run(_bad_feeds(feeds, what))
    (out,) = sess.run(feeds)
    check(out, ref, exact=False)


@gpu
@pytest.mark.gpu
def test_cuda_deferred_reports_at_a_later_run(good, capfd):
    """check=deferred never synchronises: the bad run succeeds (bad lookups add zeros) and a later
    run writes the error to stderr, once; the session stays usable."""
    feeds, ref = good
    sess = session(make_model(dict(table_rows=ROWS, dim=DIM, check="deferred"), shapes=False), "cuda",
                   log_severity_level=4)
    sess.run(_bad_feeds(feeds, "index_out_of_range"))
    (out,) = sess.run(feeds)
    check(out, ref, exact=False)
    err = capfd.readouterr().err
    assert "bad input in an earlier run" in err and "out of range for table 1" in err
    sess.run(feeds)
    assert "bad input" not in capfd.readouterr().err  # reported once, record cleared
