"""The core's per-table form (what the exporter's table-batched nodes use): every table's own ids,
offsets and per-sample weights, with PyTorch's rules per table; bad input names its table. Runs on
the CPU reference, and on the CUDA kernels where a GPU is visible (same checks, same messages)."""

import pytest
import torch

from cases import assert_close, make_case, per_table, run_op_tables
from dlrm_deploy.runtime import _core

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _core.cuda_available() else [])
pytestmark = pytest.mark.parametrize("device", DEVICES)

VARIANTS = ["auto", "baseline", "combined"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("ilo", [0, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_per_table_matches_reference(device, dtype, ilo, weighted):
    for seed, variant in enumerate(VARIANTS):
        case = make_case(seed=seed, tables=(30, 1, 70), dim=8 if dtype == "int8" else 10, dtype=dtype,
                         weighted=weighted, include_last_offset=ilo, variant=variant).to(device)
        idx, off, psw = per_table(case, trailing=3 if ilo else 0)
        assert_close(case, run_op_tables(case, idx, off, psw))


def test_per_table_empty_batch_and_int32(device):
    case = make_case(seed=3, batch=0, index_dtype=torch.int32).to(device)
    idx, off, psw = per_table(case)
    assert run_op_tables(case, idx, off, psw).shape == (0, 2 * 16)


def _bad(case, what):
    idx, off, psw = per_table(case)
    if what == "first offset not 0":
        off[1] = off[1].clone()
        off[1][0] = 1
    elif what == "negative first offset":
        off[1] = off[1].clone()
        off[1][0] = -2
    elif what == "offset past the end":
        off[1] = off[1].clone()
        off[1][-1] = len(idx[1]) + 1
    elif what == "decreasing":
        off[1] = torch.tensor([0, 3, 1] + [3] * (len(off[1]) - 3), dtype=off[1].dtype)
        idx[1] = torch.zeros(3, dtype=idx[1].dtype)
    elif what == "negative id":
        idx[1] = idx[1].clone()
        idx[1][-1] = -5
    elif what == "id past the table":
        idx[1] = idx[1].clone()
        idx[1][-1] = case.attrs["table_rows"][1]
    elif what == "bag counts differ":
        off[1] = off[1][:-1]
    return idx, off, psw


BAD = {
    "first offset not 0": "first offset of offsets of table 1 is 1",
    "negative first offset": "offset -2 of bag 0 of offsets of table 1 is negative",
    "offset past the end": "past the end",
    "decreasing": "non-decreasing: bag 1 of offsets of table 1",
    "negative id": "index -5 at position .* of indices of table 1",
    "id past the table": "index 70 at position .* of indices of table 1 is out of range",
    "bag counts differ": "offsets of table 1 holds 7 bags",
}


@pytest.mark.parametrize("what", list(BAD))
@pytest.mark.parametrize("variant", VARIANTS)
def test_per_table_bad_input_names_the_table(device, what, variant):
    case = make_case(seed=5, tables=(50, 70), batch=8, max_len=4, lengths="fixed", variant=variant).to(device)
    idx, off, psw = _bad(case, what)
    with pytest.raises(RuntimeError, match=BAD[what]):
        run_op_tables(case, idx, off, psw)
    # the op stays usable
    idx, off, psw = per_table(case)
    assert_close(case, run_op_tables(case, idx, off, psw))


def test_packed_form_still_requires_first_offset_zero(device):
    case = make_case(seed=2).to(device)
    off = case.offsets.clone()
    off[0] = 1
    from dlrm_deploy.runtime.torch_op import op_call

    with pytest.raises(RuntimeError, match="first offset"):
        op_call(case.weight, case.indices, off, case.psw, **case.attrs)


def test_per_table_weighted_table_without_ids(device):
    """A weighted table whose bags are all empty in this batch: its (empty) weights tensor may come
    with a NULL data pointer (ORT on CUDA does that), which must not count as "no weights"."""
    case = make_case(seed=9, tables=(30, 40), batch=4, weighted=True, dim=8).to(device)
    idx, off, psw = per_table(case)
    idx[1] = idx[1][:0]
    psw[1] = psw[1][:0]
    off[1] = torch.zeros_like(off[1])
    out = run_op_tables(case, idx, off, psw)
    assert torch.count_nonzero(out[:, 8:]) == 0
    assert_close(case, torch.cat([out[:, :8], torch.from_numpy(case.expected[:, 8:]).to(out)], 1))
