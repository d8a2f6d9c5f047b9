"""int4 row-wise tables on the CPU: the row layout and its quantization, validation of dim (contract,
export, ONNX Runtime), the core's sequential CPU reference against a dequantise-then-embedding_bag
reference on random shapes, bad ids and offsets, the refusal of the multi-threaded CPU forward, the
exported model in ONNX Runtime's CPU provider against the fp32 model, and the model as TensorRT gets
it (row-wise tables as int32 views). The GPU side is in test_core_gpu.py / test_ort_op.py (marked gpu)
and the TensorRT harness."""

from __future__ import annotations

import ctypes

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from cases import assert_close, make_case, per_table, run_reference
from dlrm_deploy import contract as C
from dlrm_deploy.layout import dequantize_int4_rowwise, int4_codes, int4_scale_bias, quantize_int4_rowwise
from dlrm_deploy.runtime import _core

MSG = 512


def _lib():
    lib = _core.lib()
    Cfg, P, I64, SZ = ctypes.POINTER(_core.Config), ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    TL = ctypes.POINTER(_core.TableLookups)
    for name, args in {"dd_forward_cpu_reference": [Cfg, P, P, P, P, I64, I64, P, P, SZ],
                       "dd_forward_tables_cpu_reference": [Cfg, P, TL, P, P, SZ],
                       "dd_forward_cpu": [Cfg, P, P, P, P, I64, I64, P, P, SZ],
                       "dd_forward_tables_cpu": [Cfg, P, TL, P, P, SZ]}.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = ctypes.c_int, args
    return lib


def _tables_call(fn, case, idx_l, off_l, psw_l):
    """fn (a per-table CPU forward) on host tensors; returns (rc, message, output)."""
    a = case.attrs
    T, D = len(a["table_rows"]), a["dim"]
    cfg = _core.make_config(a, "int32" if idx_l[0].dtype == torch.int32 else "int64")
    arr = (_core.TableLookups * T)()
    keep = []
    for t in range(T):
        ids, off = idx_l[t].contiguous(), off_l[t].contiguous()
        keep += [ids, off]
        arr[t].indices = ids.data_ptr() if ids.numel() else None
        arr[t].offsets = off.data_ptr()
        arr[t].num_indices, arr[t].num_offsets = ids.numel(), off.numel()
        if psw_l is not None:
            w = psw_l[t].contiguous()
            keep.append(w)
            arr[t].per_sample_weights = w.data_ptr()
    batch = off_l[0].numel() - int(a.get("include_last_offset", 0))
    out_t = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.get("out_dtype", "fp32")]
    out = torch.zeros((batch, T * D), dtype=out_t)
    buf = ctypes.create_string_buffer(MSG)
    rc = fn(ctypes.byref(cfg), case.weight.contiguous().data_ptr(), arr, out.data_ptr(), buf, MSG)
    return rc, buf.value.decode(), out


def _torch_reference(case) -> np.ndarray:
    """Dequantise every table (numpy, float64), then torch.nn.functional.embedding_bag per table (float64)."""
    a = case.attrs
    T, D, ilo = len(a["table_rows"]), a["dim"], int(a.get("include_last_offset", 0))
    blob = case.weight.numpy()
    values = torch.from_numpy(dequantize_int4_rowwise(blob, D))
    idx_l, off_l, psw_l = per_table(case)
    base = np.cumsum([0] + list(a["table_rows"]))
    outs = []
    for t in range(T):
        table = values[base[t]:base[t + 1]]
        w = None if psw_l is None else psw_l[t].double()
        outs.append(torch.nn.functional.embedding_bag(idx_l[t].long(), table, off_l[t].long(), mode=a["mode"],
                                                      per_sample_weights=w, include_last_offset=bool(ilo)))
    return torch.cat(outs, dim=1).numpy()


# --------------------------------------------------------------------------------------------
# Layout and quantization


def test_row_layout_nibbles_scale_bias():
    x = np.array([[0.0, 15.0, 1.0, 14.0, 2.0, 13.0, 3.0, 12.0] * 2], np.float32) * 0.5 - 1.0
    q = quantize_int4_rowwise(x)
    assert q.shape == (1, C.int4_row_bytes(16)) == (1, 16) and q.dtype == np.uint8
    # min -1, max 6.5: scale 0.5, codes = the pattern; column 2i low nibble of byte i
    assert list(q[0, :8]) == [0xF0, 0xE1, 0xD2, 0xC3] * 2
    scale, bias = int4_scale_bias(q, 16)
    assert scale[0] == np.float32(0.5) and bias[0] == np.float32(-1.0)
    np.testing.assert_array_equal(dequantize_int4_rowwise(q, 16), x.astype(np.float64))
    wide = quantize_int4_rowwise(np.zeros((2, 24), np.float32))  # 12 code bytes + 8 = 20 -> 32, zero padding
    assert wide.shape == (2, 32) and not wide[:, 20:].any()
    s, b = int4_scale_bias(wide, 24)
    assert (s == 1).all() and (b == 0).all() and not int4_codes(wide, 24).any()  # constant row: scale 1, codes 0


@pytest.mark.parametrize("seed", range(4))
def test_quantization_error_within_half_step(seed):
    rng = np.random.default_rng(seed)
    dim = int(rng.choice([8, 16, 56, 128]))
    x = (rng.standard_normal((300, dim)) * rng.uniform(0.01, 100, (300, 1))).astype(np.float32)
    q = quantize_int4_rowwise(torch.from_numpy(x)).numpy()
    scale, bias = int4_scale_bias(q, dim)
    np.testing.assert_allclose(scale, (x.max(1) - x.min(1)) / np.float32(15), rtol=1e-6)
    np.testing.assert_array_equal(bias, x.min(1))
    err = np.abs(dequantize_int4_rowwise(q, dim) - x)
    assert (err <= scale[:, None].astype(np.float64) * (0.5 + 1e-5) + 1e-6 * np.abs(x)).all(), err.max()
    codes = int4_codes(q, dim)
    assert codes.max() <= 15 and (codes == 15).any(axis=1).all() and (codes == 0).any(axis=1).all()
    # export/tables.py chunks big tables: same bytes
    from dlrm_deploy.export.tables import convert_table

    np.testing.assert_array_equal(convert_table(torch.from_numpy(x), "int4").numpy(), q)


def test_row_bytes_core_and_contract_agree():
    for dim in (8, 16, 24, 48, 56, 64, 120, 128, 1000):
        cfg = _core.make_config(dict(table_rows=[3], dim=dim, dtype="int4"))
        assert _core.row_bytes(cfg) == C.row_bytes("int4", dim) == C.int4_row_bytes(dim)
        assert C.int4_row_bytes(dim) % 16 == 0 and C.int4_row_bytes(dim) >= dim // 2 + 8
    assert C.int4_row_bytes(128) == 80 and C.int8_row_bytes(128) == 144


@pytest.mark.parametrize("dim", [4, 6, 12, 20, 100])
def test_dim_not_multiple_of_8_rejected(dim):
    with pytest.raises(ValueError) as e:
        C.validate_attributes(dict(table_rows=[10], dim=dim, dtype="int4"))
    assert str(e.value) == f"int4 row-wise tables need dim divisible by 8 (got {dim})"
    with pytest.raises(ValueError, match="divisible by 8"):
        quantize_int4_rowwise(np.zeros((2, dim), np.float32))


def test_export_rejects_dim_not_multiple_of_8(tmp_path):
    from dlrm_deploy.export import export_onnx

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.EmbeddingBag(50, 16, mode="sum")
            self.b = torch.nn.EmbeddingBag(40, 12, mode="sum")

        def forward(self, i0, o0, i1, o1):
            return torch.cat([self.a(i0, o0), self.b(i1, o1)], 1)

    ids, offs = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"int4 row-wise tables need dim divisible by 8 \(got 12\)") as e:
        export_onnx(M().eval(), (ids, offs, ids, offs), tmp_path / "m.onnx", dtype="int4")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------------------------
# The CPU reference


def _random_case(seed):
    rng = np.random.default_rng(1000 + seed)
    T = int(rng.integers(1, 5))
    tables = tuple(int(r) for r in rng.integers(1, 400, T))
    mode = str(rng.choice(["sum", "mean"]))
    kw = dict(seed=seed, tables=tables, dim=int(rng.integers(1, 34)) * 8, batch=int(rng.integers(0, 20)),
              dtype="int4", mode=mode, weighted=bool(mode == "sum" and rng.random() < 0.5),
              include_last_offset=int(rng.integers(0, 2)),
              index_dtype=torch.int32 if rng.random() < 0.5 else torch.int64,
              max_len=int(rng.choice([1, 6, 40, 200])), out_dtype=str(rng.choice(["fp32", "fp32", "fp16", "bf16"])))
    if rng.random() < 0.3 and min(tables) > 4:
        kw.update(pinned_rows=int(rng.integers(1, min(tables))), hot_first=1)
    return make_case(**kw)


@pytest.mark.parametrize("seed", range(24))
def test_reference_matches_dequantise_then_embedding_bag(seed):
    """Random tables, dims (multiples of 8 up to 264), batches (0 included), modes, weights, offsets
    forms, index and output types, hot-first layouts: the core's packed and per-table references
    against float64 dequantise-then-sum (tight, per element) and torch's embedding_bag on the
    dequantised tables; both forms bit for bit the same."""
    case = _random_case(seed)
    packed = run_reference(case)
    assert_close(case, packed)
    if not case.attrs.get("hot_first"):  # (_torch_reference reads the plain layout)
        want = _torch_reference(case)
        out_eps = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[packed.dtype]
        np.testing.assert_allclose(packed.double().numpy(), want, rtol=out_eps, atol=out_eps * (1 + np.abs(want).max()))
    idx_l, off_l, psw_l = per_table(case, trailing=2 if case.attrs["include_last_offset"] else 0)
    rc, msg, tables_out = _tables_call(_lib().dd_forward_tables_cpu_reference, case, idx_l, off_l, psw_l)
    assert rc == 0, msg
    assert torch.equal(tables_out, packed)


def test_reference_decodes_every_code_and_column():
    """Each of the 16 codes in both nibbles of a byte, with extreme scales and biases."""
    dim = 32
    rows = np.zeros((16, C.int4_row_bytes(dim)), np.uint8)
    codes = (np.arange(16)[:, None] + np.arange(dim)[None, :]) % 16
    rows[:, :dim // 2] = codes[:, 0::2] | (codes[:, 1::2] << 4)
    scale = np.array([2.0 ** e for e in range(-8, 8)], np.float32)
    bias = np.linspace(-1e3, 1e3, 16).astype(np.float32)
    rows[:, dim // 2:dim // 2 + 4] = scale.view(np.uint8).reshape(-1, 4)
    rows[:, dim // 2 + 4:dim // 2 + 8] = bias.view(np.uint8).reshape(-1, 4)
    case = make_case(seed=0, tables=(16,), dim=dim, batch=16, dtype="int4", lengths="one")
    case.weight = torch.from_numpy(rows)
    case.indices = torch.arange(16)
    case.offsets = torch.arange(16)
    out = run_reference(case).numpy()
    want = (scale[:, None] * codes.astype(np.float32) + bias[:, None]).astype(np.float32)  # exact in fp32
    np.testing.assert_array_equal(out, want)


def test_reference_bad_ids_and_offsets():
    case = make_case(seed=5, tables=(30, 20), dim=16, batch=3, dtype="int4", lengths="fixed", max_len=2)
    idx_l, off_l, _ = per_table(case)
    lib = _lib()
    bad = [t.clone() for t in idx_l]
    bad[1][3] = 20  # table 1 has 20 rows
    rc, msg, _ = _tables_call(lib.dd_forward_tables_cpu_reference, case, bad, off_l, None)
    assert rc == 2 and msg == "index 20 at position 3 of indices of table 1 is out of range for table 1 with 20 rows"
    bad = [t.clone() for t in idx_l]
    bad[0][0] = -1
    rc, msg, _ = _tables_call(lib.dd_forward_tables_cpu_reference, case, bad, off_l, None)
    assert rc == 2 and "index -1 at position 0" in msg
    offs = [o.clone() for o in off_l]
    offs[1][0] = 1
    rc, msg, _ = _tables_call(lib.dd_forward_tables_cpu_reference, case, idx_l, offs, None)
    assert rc == 2 and "the first offset of offsets of table 1 is 1" in msg
    offs = [o.clone() for o in off_l]
    offs[0][2] = 99
    rc, msg, _ = _tables_call(lib.dd_forward_tables_cpu_reference, case, idx_l, offs, None)
    assert rc == 2 and "past the end" in msg
    case.indices = case.indices.clone()
    case.indices[4] = 10**6
    with pytest.raises(RuntimeError, match="index 1000000 at position 4 of indices of table 0"):
        run_reference(case)


@pytest.mark.parametrize("seed", range(16))
def test_fast_cpu_forward_matches_the_reference(seed):
    """The multi-threaded CPU forward (AVX2 where the machine has it) decodes int4 rows exactly as
    the reference: both forms bit for bit, on the random cases of the reference test."""
    case = _random_case(100 + seed)
    lib = _lib()
    idx_l, off_l, psw_l = per_table(case, trailing=2 if case.attrs["include_last_offset"] else 0)
    rc, msg, fast = _tables_call(lib.dd_forward_tables_cpu, case, idx_l, off_l, psw_l)
    assert rc == 0, msg
    rc, msg, ref = _tables_call(lib.dd_forward_tables_cpu_reference, case, idx_l, off_l, psw_l)
    assert rc == 0, msg
    assert torch.equal(fast, ref)
    from cases import run_op

    assert torch.equal(run_op(case), run_reference(case))  # the torch op's CPU path, packed form


# --------------------------------------------------------------------------------------------
# Export, ONNX Runtime (CPU) and the model as TensorRT gets it


@pytest.fixture(scope="module")
def small_int4(tmp_path_factory):
    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs

    cfg = get_config("small")
    model = DLRM(cfg, seed=0).eval()
    d = tmp_path_factory.mktemp("int4")
    path = d / "m.onnx"
    info = export_onnx(model, make_inputs(cfg, 8, seed=0), path, dtype="int4", output_names=["probability"])
    return cfg, model, path, info


def test_export_int4_attributes_and_weights(small_int4):
    cfg, model, path, info = small_int4
    m = onnx.load(str(path))
    nodes = [n for n in m.graph.node if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]
    assert nodes
    inits = {t.name: t for t in m.graph.initializer}
    bags = [mod for mod in model.modules() if isinstance(mod, torch.nn.EmbeddingBag)]
    blobs = []
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["dtype"] == b"int4"
        w = inits[n.input[0]]
        assert w.data_type == TensorProto.UINT8
        assert list(w.dims) == [sum(attrs["table_rows"]), C.int4_row_bytes(attrs["dim"])]
        blobs.append(numpy_helper.to_array(w))
    # the stored rows are exactly the quantization of the model's tables, in table order
    want = np.concatenate([quantize_int4_rowwise(b.weight.detach()).numpy() for b in bags])
    np.testing.assert_array_equal(np.concatenate(blobs), want)


def test_export_int4_accuracy_in_onnx_runtime(small_int4):
    """The int4 model in ONNX Runtime's CPU provider (int4 goes to the core's reference there): equal
    to PyTorch on the dequantised tables (the kernels are right), and within the int4 tolerance of
    the fp32 model (runtime/accuracy.py: int8's scaled by the ratio of the quantization steps)."""
    pytest.importorskip("onnxruntime")
    from dlrm_deploy.export import make_inputs
    from dlrm_deploy.runtime import ort as ort_rt
    from dlrm_deploy.runtime.accuracy import TOLERANCE, compare, onnx_feeds

    cfg, model, path, _ = small_int4
    try:
        sess = ort_rt.ort_session(str(path), device="cpu")
    except FileNotFoundError as e:
        pytest.skip(f"ONNX Runtime op library not built: {e}")
    inputs = make_inputs(cfg, 256, pooling=f"var:{cfg.pooling}", seed=1)
    got = sess.run(onnx_feeds(sess.input_names, *inputs))[0]
    with torch.no_grad():
        want = model(*inputs).numpy()
        deq = __import__("copy").deepcopy(model)
        for mod in deq.modules():
            if isinstance(mod, torch.nn.EmbeddingBag):
                q = quantize_int4_rowwise(mod.weight.detach()).numpy()
                mod.weight.copy_(torch.from_numpy(dequantize_int4_rowwise(q, mod.embedding_dim).astype(np.float32)))
        want_deq = deq(*inputs).numpy()
    err_deq, _ = compare(got, want_deq)
    err, _ = compare(got, want)
    assert err_deq <= TOLERANCE["fp32"], err_deq
    assert err <= TOLERANCE["int4"], err
    assert err > err_deq  # the quantization shows


def test_export_cli_int4(tmp_path, capsys):
    from dlrm_deploy import cli

    out = tmp_path / "c.onnx"
    assert cli.main(["export", "--config", "small", "--out", str(out), "--dtype", "int4", "--no-table-batching"]) == 0
    m = onnx.load(str(out))
    dtypes = {onnx.helper.get_attribute_value(a) for n in m.graph.node if n.domain == C.DOMAIN for a in n.attribute
              if a.name == "dtype"}
    assert dtypes == {b"int4"}


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_trt_onnx_model_hands_row_bytes_as_int32(tmp_path, dtype):
    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs
    from dlrm_deploy.runtime.trt import save_trt_onnx, trt_onnx_model

    cfg = get_config("small")
    path = tmp_path / "m.onnx"
    export_onnx(DLRM(cfg, seed=0).eval(), make_inputs(cfg, 8, seed=0), path, dtype=dtype, external_data=True)
    original = onnx.load(str(path))  # external data loaded
    model, n = trt_onnx_model(path)
    assert n >= 1
    before = {t.name: t for t in original.graph.initializer}
    with pytest.raises(ValueError, match="same folder"):
        save_trt_onnx(path, tmp_path / "sub" / "m.trt.onnx")
    out = tmp_path / "m.trt.onnx"
    save_trt_onnx(path, out)
    saved = onnx.load(str(out))  # the exported file's external data, unchanged
    for t in saved.graph.initializer:
        b = before.get(t.name)  # new ones: the expanded dot interaction's shapes and pairs (int64)
        if b is None:
            assert t.data_type == TensorProto.INT64
            continue
        if b.data_type != TensorProto.UINT8:
            continue
        assert t.data_type == TensorProto.INT32 and list(t.dims) == [b.dims[0], b.dims[1] // 4]
        assert numpy_helper.to_array(t).tobytes() == numpy_helper.to_array(b).tobytes()
    fp32 = tmp_path / "f.onnx"
    export_onnx(DLRM(cfg, seed=0).eval(), make_inputs(cfg, 8, seed=0), fp32, dtype="fp32")
    assert trt_onnx_model(fp32)[1] == 0
