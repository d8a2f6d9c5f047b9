"""int8 tables stored split_scales=1 (every row's codes first, then every row's fp32 scale and bias):
the same values as the row form, bit for bit, on the CPU (sequential reference and fast forward)
and on the GPU (every variant; skipped without one); the layout helpers; the attribute's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cases import assert_close, make_case, run_op, run_reference
from dlrm_deploy import contract
from dlrm_deploy.layout import join_scales, quantize_int8_rowwise, split_scales
from dlrm_deploy.runtime import _core
from dlrm_deploy.runtime.torch_op import op_call

GPU = torch.cuda.is_available()


def _ort_cuda() -> bool:
    """Whether ONNX Runtime here has the CUDA execution provider (onnxruntime-gpu)."""
    from dlrm_deploy.runtime import ort as dd_ort

    return GPU and dd_ort.cuda_available()


def _pair(**kw):
    """The same case with the int8 rows together and split."""
    return make_case(dtype="int8", **kw), make_case(dtype="int8", split_scales=1, **kw)


def test_split_and_join_round_trip():
    rows = quantize_int8_rowwise(np.random.default_rng(0).standard_normal((7, 24)).astype(np.float32))
    blob = split_scales(rows, 24)
    assert blob.shape == (7, 32) and blob.dtype == np.uint8
    flat = blob.reshape(-1)
    assert np.array_equal(flat[:7 * 24].reshape(7, 24), rows[:, :24])
    assert np.array_equal(flat[7 * 24:].reshape(7, 8), rows[:, 24:32])
    assert np.array_equal(join_scales(blob, 24), rows)  # padding comes back as zeros


def test_row_bytes_and_layout_of_the_config():
    cfg = _core.make_config(dict(table_rows=[5, 6], dim=128, dtype="int8", split_scales=1))
    assert _core.row_bytes(cfg) == 136 == contract.row_bytes("int8", 128, split_scales=True)
    assert contract.row_bytes("int8", 128) == 144 and contract.row_bytes("fp16", 64, split_scales=True) == 128


@pytest.mark.parametrize("attrs,message", [
    (dict(dtype="fp16", dim=16), "split_scales=1 needs int8 tables"),
    (dict(dtype="int4", dim=16), "split_scales=1 needs int8 tables"),
    (dict(dtype="int8", dim=12), "split_scales=1 needs dim divisible by 8"),
    (dict(dtype="int8", dim=16, split_scales=2), "split_scales"),
])
def test_bad_split_scales_refused(attrs, message):
    attrs = {"split_scales": 1, **attrs}
    with pytest.raises(ValueError, match=message):
        contract.validate_attributes(dict(table_rows=[10], **attrs))


def test_rows_shaped_blob_refused_with_the_layout_in_the_message():
    case, _ = _pair(seed=1, dim=16)
    with pytest.raises(ValueError, match=r"expected \[\d+, 24\] .*split_scales=1"):
        op_call(case.weight, case.indices, case.offsets, **dict(case.attrs, split_scales=1))


@pytest.mark.parametrize("dim", [8, 16, 24, 64, 128, 136])
@pytest.mark.parametrize("kw", [dict(), dict(mode="mean"), dict(weighted=True, include_last_offset=1),
                                dict(index_dtype=torch.int32, pinned_rows=6, hot_first=1)])
def test_cpu_same_bits_as_rows(dim, kw):
    rows, split = _pair(seed=dim, tables=(40, 7, 90), dim=dim, batch=9, max_len=25, **kw)
    assert split.weight.shape == (137, dim + 8)
    fast = run_op(split)
    assert torch.equal(fast, run_op(rows))
    assert torch.equal(run_reference(split), run_reference(rows))
    assert_close(split, fast)


def test_cpu_bad_id_same_message_as_rows():
    rows, split = _pair(seed=4, tables=(30, 20), dim=16, batch=4)
    bad = split.indices.clone()
    bad[3] = 30 if bad.numel() > 3 else bad[0]
    msgs = []
    for c in (rows, split):
        with pytest.raises(RuntimeError) as e:
            op_call(c.weight, bad, c.offsets, **c.attrs)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "out of range" in msgs[0]


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(contract.VARIANTS))
@pytest.mark.parametrize("dim", [8, 16, 32, 64, 128, 256])
def test_gpu_matches_reference_every_variant(variant, dim):
    for seed, kw in enumerate([dict(), dict(mode="mean"), dict(weighted=True, include_last_offset=1),
                               dict(index_dtype=torch.int32, lengths="fixed", max_len=150),
                               dict(pinned_rows=20, hot_first=1)]):
        kw = {"max_len": 40, **kw}
        rows, split = _pair(seed=seed, tables=(300, 500, 70), dim=dim, batch=33, variant=variant, **kw)
        if kw.get("hot_first"):
            _core.setup_l2_persistence(_core.make_config(split.attrs))
        gpu = run_op(split.to("cuda")).cpu()
        assert_close(split, gpu)
        cpu = run_op(split)
        assert torch.equal(cpu, run_op(rows))
        if variant != "auto":  # sums in the CPU's order (auto sums int8 biases apart: warp_kernel.cuh)
            assert torch.equal(cpu, gpu), f"not bit-exact: max diff {(cpu.double() - gpu.double()).abs().max()}"


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dim", [16, 32, 64, 128])
def test_gpu_bad_ids_reported(dim):
    """An id out of range in a long bag (the rows-in-shared-memory kernel at these widths, too)."""
    _, split = _pair(seed=6, tables=(300, 200), dim=dim, batch=12, lengths="fixed", max_len=97)
    c = split.to("cuda")
    assert_close(split, run_op(c).cpu())
    for pos, bad in ((0, 300), (70, -1), (96 * 12 + 40, 200)):
        idx = c.indices.clone()
        idx[pos] = bad
        with pytest.raises(RuntimeError, match="out of range|index -1"):
            op_call(c.weight, idx, c.offsets, **c.attrs)


@pytest.mark.parametrize("hot", [False, True], ids=["plain", "hot_first_external"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not _ort_cuda(), reason="needs a CUDA GPU and onnxruntime's CUDA execution provider")])])
def test_export_stores_fused_int8_split_and_onnxruntime_agrees(tmp_path, device, hot):
    """The `small` DLRM at dim 64 exported int8: the fused node stores its tables split (weights
    [rows, 72]) by default, split_scales=False keeps the row form; ONNX Runtime gives the same bits
    from both, at another batch with variable bags (empty ones included). hot: rows reordered by a
    sample, hot prefixes first (hot_first=1), the tables streamed into an external data file."""
    import onnx

    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs
    from dlrm_deploy.runtime.ort import ort_session

    cfg = get_config("small", dim=64)
    model = DLRM(cfg, seed=0)
    example = make_inputs(cfg, 8, seed=1)
    dense, idx, off = make_inputs(cfg, 5, pooling="var:6", seed=3)
    outs = {}
    for split in (True, False):
        path = tmp_path / f"m_{split}.onnx"
        hot_kw = dict(hot_rows_from=make_inputs(cfg, 64, source="zipf:1.2", seed=7), external_data=True) if hot else {}
        export_onnx(model, example, path, dtype="int8", split_scales=split, **hot_kw)
        m = onnx.load(str(path), load_external_data=False)
        (node,) = [n for n in m.graph.node if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE]
        attrs = {a.name: a for a in node.attribute}
        assert attrs["split_scales"].i == int(split) and attrs["hot_first"].i == int(hot)
        w = next(t for t in m.graph.initializer if t.name == node.input[0])
        assert list(w.dims) == [sum(cfg.table_rows), 72 if split else 80]
        sess = ort_session(path, device=device)
        names = sess.input_names
        feeds = dict(zip(names, [dense.numpy()] + [i.numpy() for i in idx] + [o.numpy() for o in off]))
        outs[split] = sess.run(feeds)[0]
    assert np.array_equal(outs[True], outs[False])
    with torch.no_grad():
        want = model(dense, idx, off).numpy()
    np.testing.assert_allclose(outs[True], want, rtol=0, atol=1e-2)
