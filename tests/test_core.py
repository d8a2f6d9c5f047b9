"""Kernel core on the CPU: the contract, the CPU reference against an independent float64
reference and torch.nn.functional.embedding_bag, bad input, the torch op and its fake kernel."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from cases import assert_close, make_case, run_op
from dlrm_deploy import contract
from dlrm_deploy.runtime import _core
from dlrm_deploy.runtime.torch_op import embedding_bag, op_call


def test_generated_contract_files_are_current():
    r = subprocess.run([sys.executable, "scripts/gen_contract.py", "--check"], cwd=str(_root()), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _root():
    import pathlib

    return pathlib.Path(__file__).resolve().parent.parent


def test_op_identity_is_the_contract():
    """ORT's domain/op name and TensorRT's plugin namespace/name/version all come from here."""
    import ctypes

    vals = [ctypes.c_char_p() for _ in range(3)]
    _core.lib().dd_op_identity.argtypes = [ctypes.POINTER(ctypes.c_char_p)] * 3
    _core.lib().dd_op_identity(*[ctypes.byref(v) for v in vals])
    assert [v.value.decode() for v in vals] == [contract.DOMAIN, contract.OP_TYPE, str(contract.OP_VERSION)]


def test_core_fields_match_python_contract():
    assert _core.fields() == [(f.name, f.kind, f.default) for f in contract.FIELDS]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_cpu_reference_all_dtypes_modes(dtype, mode, index_dtype):
    for seed in range(3):
        case = make_case(seed=seed, dtype=dtype, mode=mode, index_dtype=index_dtype, dim=16 if dtype != "int8" else 12)
        assert_close(case, run_op(case))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_per_sample_weights_and_include_last_offset(dtype):
    for ilo in (0, 1):
        case = make_case(seed=7, dtype=dtype, weighted=True, include_last_offset=ilo, dim=8)
        assert_close(case, run_op(case))


@pytest.mark.parametrize("lengths,max_len", [("one", 1), ("fixed", 0), ("fixed", 3000)])
def test_bag_lengths_one_empty_huge(lengths, max_len):
    case = make_case(seed=3, tables=(40, 9), dim=8, batch=3, lengths=lengths, max_len=max_len)
    out = run_op(case)
    assert_close(case, out)
    if max_len == 0:
        assert torch.count_nonzero(out) == 0


def test_hot_first_layout():
    case = make_case(seed=5, tables=(30, 40, 50), dim=8, pinned_rows=10, hot_first=1, max_len=9)
    assert_close(case, run_op(case))


@pytest.mark.parametrize("out_dtype", ["fp16", "bf16"])
def test_half_outputs(out_dtype):
    case = make_case(seed=11, dtype="fp32", out_dtype=out_dtype)
    out = run_op(case)
    assert out.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[out_dtype]
    assert_close(case, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_drop_in_equals_torch(dtype, mode):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 24, generator=g).to(dtype)
    idx = torch.randint(0, 300, (400,), generator=g)
    off = torch.tensor([0, 0, 5, 105, 106, 250])
    psw = torch.rand(400, generator=g) if mode == "sum" else None
    ours = embedding_bag(idx, w, off, mode=mode, per_sample_weights=psw)
    ref = torch.nn.functional.embedding_bag(idx, w.float(), off, mode=mode, per_sample_weights=psw)
    assert ours.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(ours.float(), ref, rtol=tol, atol=tol)
    if dtype == torch.float32 and psw is None:  # same order of fp32 additions as torch's CPU kernel
        assert torch.equal(ours, torch.nn.functional.embedding_bag(idx, w, off, mode=mode))


BAD = [
    ("index out of range", dict(idx=[0, 5, 100], off=[0, 1]), "out of range for table 0 with 100 rows"),
    ("negative index", dict(idx=[0, -1, 3], off=[0, 1]), "index -1 at position 1"),
    ("decreasing offsets", dict(idx=[0, 1, 2], off=[0, 2, 1]), "non-decreasing"),
    ("offset past end", dict(idx=[0, 1, 2], off=[0, 9]), "past the end"),
    ("negative offset", dict(idx=[0, 1, 2], off=[-1, 2]), "negative"),
]


@pytest.mark.parametrize("name,data,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_with_message(name, data, message):
    w = torch.randn(100, 8)
    with pytest.raises(RuntimeError, match=message):
        embedding_bag(torch.tensor(data["idx"]), w, torch.tensor(data["off"]))
    # the process and the op stay usable
    assert embedding_bag(torch.tensor([1, 2]), w, torch.tensor([0])).shape == (1, 8)


def test_bad_attributes_and_shapes():
    w = torch.randn(10, 4)
    i, o = torch.tensor([1]), torch.tensor([0])
    with pytest.raises(Exception, match="variant"):
        op_call(w, i, o, table_rows=[10], dim=4, variant="fastest")
    with pytest.raises(Exception, match="weight must be"):
        op_call(w, i, o, table_rows=[11], dim=4)
    with pytest.raises(Exception, match="int32 or int64"):
        op_call(w, i.float(), o.float(), table_rows=[10], dim=4)
    with pytest.raises(Exception, match="num_tables"):
        op_call(torch.randn(20, 4), i, torch.tensor([0, 1, 1]), table_rows=[10, 10], dim=4)
    with pytest.raises(Exception, match="mode=sum"):
        op_call(w, i, o, torch.ones(1), table_rows=[10], dim=4, mode="mean")
    with pytest.raises(Exception, match="needs a torch.uint8"):
        op_call(w, i, o, table_rows=[10], dim=4, dtype="int8")
    with pytest.raises(Exception, match="divisible by 4"):
        op_call(torch.zeros(10, 16, dtype=torch.uint8), i, o, table_rows=[10], dim=6, dtype="int8")


def test_fake_kernel_traces_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        w = torch.empty(30, 8)
        out = op_call(w, torch.empty(50, dtype=torch.int64), torch.empty(7, dtype=torch.int64), table_rows=[10, 20],
                      dim=8, include_last_offset=1, out_dtype="fp16")
    assert tuple(out.shape) == (3, 16) and out.dtype == torch.float16


def test_torch_export_sees_the_op():
    class M(torch.nn.Module):
        def forward(self, w, i, o):
            return op_call(w, i, o, table_rows=[10], dim=4)

    ep = torch.export.export(M(), (torch.randn(10, 4), torch.tensor([1, 2, 3]), torch.tensor([0, 2])))
    assert "dlrm_deploy.embedding_bag" in str(ep.graph)


def test_row_bytes_and_int8_layout():
    cfg = _core.make_config(dict(table_rows=[5], dim=128, dtype="int8"))
    assert _core.row_bytes(cfg) == 144 == contract.int8_row_bytes(128)
    assert _core.describe_kernel(cfg)
