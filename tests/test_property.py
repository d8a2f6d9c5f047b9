"""Differential test: random models and inputs, exported with export_onnx and run in ONNX Runtime,
against PyTorch eager on the original nn.EmbeddingBag model (generator: tests/property_gen.py).

The oracle, per input:
  - PyTorch returns a result -> ONNX Runtime returns the same within the tolerance of property_gen;
  - PyTorch raises, or the input breaks the op contract (ids out of range, first offset not 0,
    decreasing offsets, offsets past the end) -> ONNX Runtime raises an error naming dlrm_deploy.
    (PyTorch's CPU kernel returns a result, not always the same, for some decreasing offsets;
    the op must raise for them all.)
Bad inputs go to check=checked models only; check=deferred/unchecked models get valid inputs.

Size and reproduction (environment):
  DLRM_DEPLOY_PROPERTY_CASES           input cases in all (default 300: 30 models x 10 inputs)
  DLRM_DEPLOY_PROPERTY_CASES_PER_MODEL inputs run on each exported model (default 10)
  DLRM_DEPLOY_PROPERTY_SEED            first model seed (default 0); model k is seed + k
  DLRM_DEPLOY_PROPERTY_DEVICE          cpu (default) or cuda (ONNX Runtime's CUDA provider)
A failure names its model seed and case seed; `pytest tests/test_property.py -k model7` reruns one
model, and property_gen.draw_model(7) / draw_case(spec, 3) rebuild the exact inputs.

The test_* functions after the random test are regressions for the classes of silent failure the
random test found, one small explicit input each.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import property_gen as G

CASES = int(os.environ.get("DLRM_DEPLOY_PROPERTY_CASES", "300"))
PER_MODEL = max(1, int(os.environ.get("DLRM_DEPLOY_PROPERTY_CASES_PER_MODEL", "10")))
FIRST_SEED = int(os.environ.get("DLRM_DEPLOY_PROPERTY_SEED", "0"))
MODELS = max(1, math.ceil(CASES / PER_MODEL))


@pytest.fixture(scope="module")
def device():
    dev = G.ort_device()
    if dev not in ("cpu", "cuda"):
        pytest.fail(f"DLRM_DEPLOY_PROPERTY_DEVICE must be cpu or cuda, got {dev!r}")
    if dev == "cuda":
        from dlrm_deploy.runtime.ort import cuda_available

        if not cuda_available():
            pytest.skip("DLRM_DEPLOY_PROPERTY_DEVICE=cuda but onnxruntime has no CUDAExecutionProvider")
        if not torch.cuda.is_available():
            pytest.skip("DLRM_DEPLOY_PROPERTY_DEVICE=cuda but no CUDA GPU is visible")
    return dev


def _exportable(spec: G.ModelSpec) -> G.ModelSpec:
    """int8 row-wise tables need D divisible by 4: export_onnx must refuse other D clearly; the
    model then continues with D rounded up."""
    if spec.dtype == "int8" and any(t.dim % 4 for t in spec.tables):
        msg = G.int8_dim_refused(spec)
        assert msg is not None and "divisible by 4" in msg, f"{spec.short()}: int8 with odd D not refused clearly"
        return G.with_int8_dims(spec)
    return spec


@pytest.mark.parametrize("model_seed", range(FIRST_SEED, FIRST_SEED + MODELS), ids=lambda s: f"model{s}")
def test_random_model_matches_pytorch(model_seed, tmp_path, device):
    spec = _exportable(G.draw_model(model_seed))
    em = G.ExportedModel(spec, str(tmp_path), device)
    failures = []
    for k in range(PER_MODEL):
        case = G.draw_case(spec, k)
        out = em.check(case)
        if not out.ok:
            failures.append(f"  [{out.verdict}] {case.short(spec)}: {out.message}")
    assert not failures, (f"{spec.short()}\n" + "\n".join(failures)
                          + f"\n  reproduce: property_gen.draw_case(property_gen.draw_model({model_seed}), <case seed>)")


# ---------------------------------------------------------------------------------------------
# Regressions: one explicit input per class of silent failure found by the random test.


def _table(rows=10, dim=4, mode="sum", weighted=False, ilo=False, seq_len=0, index_dtype=torch.int64):
    return G.TableSpec(rows=rows, dim=dim, mode=mode, weighted=weighted, include_last_offset=ilo, seq_len=seq_len,
                       index_dtype=index_dtype)


def _model(tmp_path, tables, *, batching=True, hot=False, dtype="fp32", check="checked", seed=1000):
    spec = G.ModelSpec(seed=seed, tables=tables, dtype=dtype, table_batching=batching, check=check, hot=hot,
                       pinned_rows=None, head=0, hot_perm=[np.arange(t.rows)[::-1].copy() for t in tables])
    return G.ExportedModel(spec, str(tmp_path), G.ort_device())


def _case(kind, *tables):
    """tables: per table (ids, offsets) or (ids, offsets, per-sample weights)."""
    tabs = []
    for t in tables:
        ids, off = np.asarray(t[0], np.int64), None if t[1] is None else np.asarray(t[1], np.int64)
        psw = np.asarray(t[2], np.float32) if len(t) > 2 else None
        tabs.append(G.TableInput(ids, off, psw))
    batch = tabs[0].ids.shape[0] if tabs[0].offsets is None else tabs[0].offsets.size
    return G.Case(seed=-1, kind=kind, target=None, detail="", batch=batch, tables=tabs)


def _assert_ok(em, case):
    out = em.check(case)
    assert out.ok, f"[{out.verdict}] {out.message}"
    return out


def test_batched_first_offset_nonzero_raises(tmp_path):
    """Table 1 of a fused group starts at offset 1: PyTorch raises ("offsets[0] has to be 0"); the fused
    op must not read table 0's ids or start table 1 late."""
    em = _model(tmp_path, [_table(), _table()])
    assert em.info.op_nodes == 1
    _assert_ok(em, _case("first_offset_positive", ([1, 2, 3], [0, 2]), ([4, 5, 6], [1, 2])))


def test_batched_first_offset_negative_raises(tmp_path):
    """Table 1's first offset is -1: in the fused op that is table 0's last id (silently summed)."""
    em = _model(tmp_path, [_table(), _table()])
    _assert_ok(em, _case("first_offset_negative", ([1, 2, 3], [0, 2]), ([4, 5, 6], [-1, 2])))


def test_batched_include_last_offset_trailing_ids_ignored(tmp_path):
    """include_last_offset=True, table 0 has ids after its last offset: PyTorch ignores them; the fused
    op must not add them to table 0's last bag."""
    em = _model(tmp_path, [_table(ilo=True), _table(ilo=True)])
    out = _assert_ok(em, _case("ilo_trailing_ids", ([1, 2, 3, 7, 8], [0, 2, 3]), ([4, 5, 6], [0, 1, 3])))
    assert out.verdict == "match"


def test_batched_include_last_offset_last_offset_checked(tmp_path):
    """include_last_offset=True: the last offset of a fused table past its ids (PyTorch raises) or
    below the previous one must be an error, not dropped unchecked."""
    em = _model(tmp_path, [_table(ilo=True), _table(ilo=True)])
    _assert_ok(em, _case("offset_past_end", ([1, 2, 3], [0, 2, 5]), ([4, 5, 6, 7, 8], [0, 1, 5])))
    _assert_ok(em, _case("decreasing_offsets", ([1, 2, 3, 4], [0, 3, 2]), ([4, 5, 6], [0, 1, 3])))


def test_batched_offset_past_end_blames_own_table(tmp_path):
    """An offset past the end of one fused table's ids must be that table's error, named by its own
    offsets input. Table 1's offsets [4, 4] with 3 ids (PyTorch raises) were reported as table 0's."""
    em = _model(tmp_path, [_table(), _table()])
    out = _assert_ok(em, _case("offset_past_end", ([1, 2, 3], [0, 2]), ([4, 5, 6], [4, 4])))
    assert "offsets_1" in out.message and "offsets_0" not in out.message, out.message
    out = _assert_ok(em, _case("offset_past_end", ([1, 2, 3], [0, 5]), ([4, 5, 6], [0, 1])))
    assert "offsets_0" in out.message and "offsets_1" not in out.message, out.message


def test_per_table_first_offset_nonzero_raises(tmp_path):
    """Without table batching too: PyTorch raises for offsets[0] != 0; the op skipped the first ids."""
    em = _model(tmp_path, [_table(), _table()], batching=False)
    _assert_ok(em, _case("first_offset_positive", ([1, 2, 3], [1, 2]), ([4, 5, 6], [0, 1])))


def test_hot_rows_negative_id_raises(tmp_path):
    """With hot rows the ids go through a remap Gather, which wraps -1 to the last row; PyTorch raises."""
    for batching in (False, True):
        em = _model(tmp_path / str(batching), [_table(), _table()], hot=True, batching=batching)
        _assert_ok(em, _case("id_negative", ([1, -1, 3], [0, 2]), ([4, 5, 6], [0, 1])))
        _assert_ok(em, _case("id_negative", ([1, 2, 3], [0, 2]), ([4, -10, 6], [0, 1])))


def test_hot_rows_id_too_large_error_names_dlrm_deploy(tmp_path):
    """An out-of-range id with hot rows is caught by ONNX Runtime's Gather: an error, but one that
    names neither dlrm_deploy nor the input."""
    em = _model(tmp_path, [_table(), _table()], hot=True)
    _assert_ok(em, _case("id_too_large", ([1, 10, 3], [0, 2]), ([4, 5, 6], [0, 1])))


def test_hot_rows_trailing_out_of_range_ids_ignored(tmp_path):
    """include_last_offset=True, an out-of-range id after the last offset: PyTorch (CPU, fp32) never
    reads it and returns a result; the remap Gather (or the fused op) fails the run."""
    em = _model(tmp_path, [_table(ilo=True)], hot=True)
    _assert_ok(em, _case("ilo_trailing_ids", ([1, 2, 3, 99], [0, 2, 3])))


# ---------------------------------------------------------------------------------------------
# PyTorch's own behaviour on bad input (CPU), the reference the oracle relies on.

_W = torch.arange(10.0).reshape(10, 1)
_PT_CASES = [
    # name, ids, offsets, include_last_offset, mode, expected: "raises" or the output column
    ("id >= rows", [1, 2, 10], [0, 2], False, "sum", "raises"),
    ("id < 0", [1, -1, 3], [0, 2], False, "sum", "raises"),
    ("first offset > 0", [1, 2, 3], [1, 2], False, "sum", "raises"),
    ("first offset < 0", [1, 2, 3], [-1, 2], False, "sum", "raises"),
    # Decreasing offsets are left out: PyTorch's CPU kernel raises for some, returns run-to-run
    # different sums for others (seen: [1, 0, 0, 2, 12] and [1, 0, 2, 3, 0] for one input), and
    # torch 2.11 raises where 2.13 returns. The op always raises (test_random_model_matches_pytorch).
    ("last offset past the end", [1, 2, 3], [0, 4], False, "sum", "raises"),
    ("include_last_offset: last offset past the end", [1, 2, 3], [0, 1, 4], True, "sum", "raises"),
    ("include_last_offset: ids after the last offset, sum (ignored)", [1, 2, 3, 4], [0, 1, 2], True, "sum",
     [1.0, 2.0]),
    ("include_last_offset: ids after the last offset, mean (divided by ids to the end)", [1, 2, 3, 4], [0, 1, 2],
     True, "mean", [1.0, 2.0 / 3.0]),
    ("include_last_offset: out-of-range ids after the last offset (never read)", [1, 2, 99, -5], [0, 1, 2], True,
     "sum", [1.0, 2.0]),
    ("empty batch", [], [], False, "sum", []),
    ("empty batch, include_last_offset", [], [0], True, "sum", []),
    ("empty bags", [1, 2], [0, 0, 2], False, "mean", [0.0, 1.5, 0.0]),
]


@pytest.mark.parametrize("name,ids,offsets,ilo,mode,expected", _PT_CASES, ids=[c[0] for c in _PT_CASES])
def test_pytorch_bad_input_behaviour(name, ids, offsets, ilo, mode, expected):
    run = lambda: F.embedding_bag(torch.tensor(ids, dtype=torch.int64), _W, torch.tensor(offsets, dtype=torch.int64),
                                  mode=mode, include_last_offset=ilo)
    if expected == "raises":
        with pytest.raises(RuntimeError):
            run()
    else:
        np.testing.assert_allclose(run()[:, 0].numpy(), np.asarray(expected, np.float32), rtol=1e-6)


def test_pytorch_2d_input_ignores_include_last_offset():
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    a = F.embedding_bag(ids, _W, mode="sum", include_last_offset=True)
    assert a[:, 0].tolist() == [3.0, 7.0, 11.0]
