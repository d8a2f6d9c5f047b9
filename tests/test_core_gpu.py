"""Kernel core on the GPU: every variant x dtype against the float64 reference and the CPU
reference (bit-exact where one lane group walks a whole bag), bad input in checked and deferred
mode. Skipped without a GPU."""

import pytest
import torch

from cases import assert_close, make_case, run_op, run_reference
from dlrm_deploy import contract
from dlrm_deploy.runtime import _core

pytestmark = pytest.mark.gpu

VARIANTS = list(contract.VARIANTS)
DTYPES = list(contract.DTYPES)


def _cpu_and_gpu(case):
    # int4: the core's sequential reference (the torch op's CPU path does not take int4 yet)
    cpu = run_reference(case) if case.attrs["dtype"] == "int4" else run_op(case)
    gpu_case = case.to("cuda")
    gpu = run_op(gpu_case)
    torch.cuda.synchronize()
    return cpu, gpu.cpu()


def _exact_expected(case, variant):
    """Whether the GPU sums in the CPU reference's order (see embedding_bag_cuda.cu): the
    thread-per-feature variants always; auto where one lane group walks a whole bag, but for int8
    (whose biases auto sums apart)."""
    if variant != "auto":
        return True
    if case.attrs.get("dtype") == "int8":
        return False
    cfg = _core.make_config(case.attrs)
    return "groups=1," in _core.describe_kernel(cfg)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [4, 16, 32, 64, 128, 256, 100])
def test_variants_match_reference(variant, dtype, dim):
    if dtype == "int8" and dim % 4:
        pytest.skip("int8 needs dim % 4 == 0")
    if dtype == "int4" and dim % 8:
        pytest.skip("int4 needs dim % 8 == 0")
    for seed, kw in enumerate([dict(), dict(mode="mean"), dict(weighted=True, include_last_offset=1),
                               dict(index_dtype=torch.int32, lengths="fixed", max_len=150)]):
        kw = {"max_len": 40, **kw}
        case = make_case(seed=seed, tables=(300, 500, 70), dim=dim, batch=33, dtype=dtype, variant=variant, **kw)
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)
        if _exact_expected(case, variant):
            assert torch.equal(cpu, gpu), f"not bit-exact: max diff {(cpu.double() - gpu.double()).abs().max()}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_one_and_huge_bags(variant):
    for lengths, max_len in (("fixed", 0), ("one", 1), ("fixed", 5000), ("random", 9)):
        case = make_case(seed=1, tables=(1000, 64), dim=32, batch=5, variant=variant, lengths=lengths,
                         max_len=max_len)
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)
        if _exact_expected(case, variant):
            assert torch.equal(cpu, gpu)


@pytest.mark.parametrize("variant", ["auto", "l2pin", "combined"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pinned_rows_both_layouts(variant, dtype):
    for hot_first in (0, 1):
        case = make_case(seed=2, tables=(400, 300), dim=64, batch=40, dtype=dtype, variant=variant, pinned_rows=50,
                         hot_first=hot_first, max_len=30)
        if hot_first:
            _core.setup_l2_persistence(_core.make_config(case.attrs))
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)


@pytest.mark.parametrize("out_dtype", ["fp16", "bf16"])
def test_half_outputs_bit_exact(out_dtype):
    case = make_case(seed=4, dim=128, batch=16, out_dtype=out_dtype, max_len=20)
    cpu, gpu = _cpu_and_gpu(case)
    assert torch.equal(cpu, gpu)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_input_checked_raises(variant):
    w = torch.randn(100, 64, device="cuda")
    for idx, off, msg in (([0, 5, 100], [0, 1], "out of range"), ([1, -3], [0, 1], "index -3"),
                          ([0, 1, 2], [0, 2, 1], "non-decreasing"), ([0, 1], [0, 7], "past the end")):
        with pytest.raises(RuntimeError, match=msg):
            from dlrm_deploy.runtime.torch_op import op_call

            op_call(w, torch.tensor(idx, device="cuda"), torch.tensor(off, device="cuda"), table_rows=[100], dim=64,
                    variant=variant)
    out = op_call(w, torch.tensor([1, 2], device="cuda"), torch.tensor([0], device="cuda"), table_rows=[100], dim=64,
                  variant=variant)
    torch.testing.assert_close(out[0], w[1] + w[2])


@pytest.mark.parametrize("dim", [16, 32, 64])
def test_int8_rows_in_shared_memory_report_bad_ids(dim):
    """int8 at these widths runs warp_async_kernel (rows in flight in shared memory): an id out of
    range or negative is an error in check=checked, wherever it sits in a long bag; good bags
    (several index batches, both stages) match the reference."""
    from dlrm_deploy.runtime.torch_op import op_call

    case = make_case(seed=6, tables=(300, 200), dim=dim, batch=12, dtype="int8", lengths="fixed", max_len=97)
    assert "warp_async_kernel" in _core.describe_kernel(_core.make_config(case.attrs))
    cpu, gpu = _cpu_and_gpu(case)
    assert_close(case, gpu)
    g = case.to("cuda")
    for pos, bad in ((0, 300), (70, -1), (96 * 12 + 40, 200)):
        idx = g.indices.clone()
        idx[pos] = bad
        with pytest.raises(RuntimeError, match="out of range|index -1"):
            op_call(g.weight, idx, g.offsets, g.psw, **case.attrs)


@pytest.mark.parametrize("dtype,dim", [("fp32", 16), ("fp32", 32), ("fp32", 64), ("fp32", 128), ("fp16", 16),
                                       ("fp16", 32), ("fp16", 64), ("fp16", 128), ("bf16", 128), ("int8", 16),
                                       ("int8", 32), ("int8", 64), ("int8", 128), ("int8", 256)])
def test_short_bags_kernel(dtype, dim):
    """Short bags with rows of 16-256 bytes, or 512 for fp32, run short_kernel (2, 4 or 8 bags a warp,
    their rows through shared memory 8-32 at a time, a lane adding whole columns, or for rows under
    128 bytes lane groups taking rows in turn): every form matches the reference, and but for int8
    and rows under 128 bytes each bag is summed in index order, so the result equals the CPU's bit
    for bit (warp_kernel's lane groups at fp16 D 128 would not). Bags of 0..40 lookups cross the row
    steps; bags of one lookup and of 0..2, 0..5 and 0..8 take more bags a warp and fewer rows a step
    (plan.cuh, short_bags and few_shape); the odd batch leaves the last warp of a table one bag.
    int8 D 64 also takes 2 bags a warp (0..150 lookups), and int8 the blob stored split_scales=1."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("short_kernel needs sm_80+")
    row_bytes = dim * {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[dtype]
    forms = [dict(), dict(mode="mean"), dict(weighted=True, include_last_offset=1),
             dict(index_dtype=torch.int32, lengths="fixed", max_len=17), dict(max_len=2),
             dict(max_len=8, mode="mean"), dict(lengths="fixed", max_len=1), dict(max_len=5, weighted=True)]
    if dtype == "int8":
        forms += [dict(split_scales=1), dict(max_len=2, split_scales=1)]
    if (dtype, dim) == ("int8", 64):
        forms += [dict(max_len=150), dict(max_len=150, mode="mean", split_scales=1)]
    for seed, kw in enumerate(forms):
        kw = {"max_len": 40, **kw}
        case = make_case(seed=seed, tables=(300, 500, 70), dim=dim, batch=33, dtype=dtype, **kw)
        assert "short_kernel" in _core.describe_kernel(_core.make_config(case.attrs))
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)
        if dtype != "int8" and row_bytes >= 128:
            assert torch.equal(cpu, gpu), f"not bit-exact: max diff {(cpu.double() - gpu.double()).abs().max()}"


@pytest.mark.parametrize("out_dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("dtype,dim", [("fp32", 128), ("fp16", 128), ("int8", 128), ("fp16", 64), ("int8", 32),
                                       ("fp32", 16), ("int4", 64), ("fp32", 1024)])
def test_outputs_at_every_alignment(out_dtype, dtype, dim):
    """auto stores a lane's elements with the widest stores their address allows (bag_io.cuh,
    store_run): an output that starts 1..7 elements past a 16-byte boundary takes narrower stores
    and holds the same values as an aligned one, with nothing written outside it."""
    case = make_case(seed=11, tables=(300, 70), dim=dim, batch=19, dtype=dtype, out_dtype=out_dtype, max_len=30)
    g = case.to("cuda")
    want = run_op(g)
    cfg = _core.make_config({**case.attrs, "check": "unchecked"})
    stream = torch.cuda.current_stream().cuda_stream
    n = want.numel()
    for shift in range(8):
        buf = torch.full((n + 16,), 7.0, dtype=want.dtype, device="cuda")
        _core.forward_cuda(cfg, g.weight.data_ptr(), g.indices.data_ptr(), g.offsets.data_ptr(), None,
                           g.indices.numel(), g.offsets.numel(), buf[shift:].data_ptr(), None, stream)
        torch.cuda.synchronize()
        assert torch.equal(buf[shift:shift + n].view_as(want), want), f"shift {shift}"
        assert (buf[:shift] == 7).all() and (buf[shift + n:] == 7).all(), f"shift {shift}: wrote outside"


def _deferred_bad_index(cfg, w):
    """One bag [1, 500, 2] of a 100-row table in check=deferred: the record names id 500. Returns
    (output [1, 64], a callable reading the record again: its return code)."""
    import ctypes

    idx = torch.tensor([1, 500, 2], device="cuda")
    off = torch.tensor([0], device="cuda")
    out = torch.empty(1, 64, device="cuda")
    ws = torch.zeros(_core.workspace_size(cfg), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    _core.forward_cuda(cfg, w.data_ptr(), idx.data_ptr(), off.data_ptr(), None, 3, 1, out.data_ptr(), ws.data_ptr(),
                       stream)
    buf = ctypes.create_string_buffer(512)
    read = lambda: _core.lib().dd_read_error(ctypes.byref(cfg), ws.data_ptr(), stream, buf, 512)  # noqa: E731
    rc = read()
    assert rc == 2 and b"index 500 at position 1" in buf.value
    return out, read


def test_deferred_mode_records_without_sync():
    cfg = _core.make_config(dict(table_rows=[100], dim=64, check="deferred"))
    w = torch.randn(100, 64, device="cuda")
    out, read = _deferred_bad_index(cfg, w)
    torch.testing.assert_close(out[0], w[1] + w[2])  # the bad lookup contributed zero
    assert read() == 0


def test_drop_in_on_cuda_equals_torch():
    w = torch.randn(5000, 128, device="cuda")
    idx = torch.randint(0, 5000, (20000,), device="cuda")
    off = torch.arange(0, 20000, 100, device="cuda")
    from dlrm_deploy.runtime.torch_op import embedding_bag

    ours = embedding_bag(idx, w, off)
    ref = torch.nn.functional.embedding_bag(idx, w, off, mode="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dim", [8, 24, 40, 128, 1024])
def test_int4_shapes_against_reference(variant, dim):
    """int4 rows at every vector width the plan picks (4-byte loads for 8/24/40, 16-byte, column
    slices at 1024), long bags, int32 ids, fp16 output: the float64 reference and the CPU reference."""
    for seed, kw in enumerate([dict(lengths="fixed", max_len=150, index_dtype=torch.int32),
                               dict(weighted=True, out_dtype="fp16"), dict(mode="mean", include_last_offset=1)]):
        case = make_case(seed=seed, tables=(1000, 37, 300), dim=dim, batch=17, dtype="int4", variant=variant,
                         **{"max_len": 40, **kw})
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)
        if _exact_expected(case, variant):
            assert torch.equal(cpu, gpu), f"not bit-exact: max diff {(cpu.double() - gpu.double()).abs().max()}"


@pytest.mark.parametrize("split", [0, 1])
@pytest.mark.parametrize("dim", [512, 1024, 2048])
def test_int8_wide_rows_sum_each_bias_once(dim, split):
    """int8 rows of 512+ codes: one lane group covers a row (512) or a row spans column slices
    (1024, 2048), each slice's lanes summing the bag's biases apart: every element gets them once."""
    for seed, kw in enumerate([dict(lengths="fixed", max_len=150, index_dtype=torch.int32),
                               dict(weighted=True, include_last_offset=1), dict(mode="mean")]):
        case = make_case(seed=seed, tables=(400, 33), dim=dim, batch=9, dtype="int8", variant="auto",
                         split_scales=split, **{"max_len": 40, **kw})
        desc = _core.describe_kernel(_core.make_config(case.attrs))
        assert ("slices=1," in desc) == (dim == 512), desc
        cpu, gpu = _cpu_and_gpu(case)
        assert_close(case, gpu)
        assert_close(case, cpu)


def test_int4_bad_input_checked_and_deferred():
    """Out-of-range ids in int4 tables: an error in checked mode, zeros and a record in deferred mode."""
    from dlrm_deploy.runtime.torch_op import op_call

    case = make_case(seed=3, tables=(100,), dim=64, batch=1, dtype="int4", lengths="one")
    w = case.weight.to("cuda")
    with pytest.raises(RuntimeError, match="index 100 at position 1"):
        op_call(w, torch.tensor([1, 100], device="cuda"), torch.tensor([0], device="cuda"), table_rows=[100], dim=64,
                dtype="int4")
    cfg = _core.make_config(dict(table_rows=[100], dim=64, dtype="int4", check="deferred"))
    out, _read = _deferred_bad_index(cfg, w)
    good = make_case(seed=3, tables=(100,), dim=64, batch=1, dtype="int4", lengths="one")
    good.indices = torch.tensor([1, 2])
    good.offsets = torch.tensor([0])
    torch.testing.assert_close(out.cpu(), run_reference(good), rtol=0, atol=0)  # the bad lookup added zero
