"""Export tests (CPU): the small DLRM and a generic nn.EmbeddingBag model exported with the custom op,
validated with the onnx checker and evaluated by onnx's reference evaluator with a numpy
implementation of the op written here from the contract (no native library needed)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from torch import nn

from dlrm_deploy import contract as C
from dlrm_deploy.export import (DLRM, dequantize_int8_rowwise, export_onnx, get_config, make_indices, make_inputs,
                                quantize_int8_rowwise)

# ---------------------------------------------------------------------------------------------
# A numpy reference of dlrm_deploy::EmbeddingBag, straight from docs/op_contract.md.


def _decode(weights: np.ndarray, dtype: str, dim: int) -> np.ndarray:
    if dtype == "int8":
        return dequantize_int8_rowwise(weights, dim)
    return np.asarray(weights).astype(np.float32)


def reference_embedding_bag(weights, indices, offsets, per_sample_weights=None, *, table_rows, dim, dtype="fp32",
                            out_dtype="fp32", mode="sum", include_last_offset=0, pinned_rows=0, hot_first=0,
                            split_scales=0, **_):
    if split_scales:  # every row's codes, then every row's scale and bias
        flat = np.asarray(weights).reshape(-1)
        n = flat.size // (dim + 8)
        weights = np.concatenate([flat[:n * dim].reshape(n, dim), flat[n * dim:].reshape(n, 8)], axis=1)
    w = _decode(weights, dtype, dim)
    T = len(table_rows)
    n_off = len(offsets) - include_last_offset
    assert n_off % T == 0
    B = n_off // T
    starts = np.concatenate([[0], np.cumsum(table_rows)[:-1]])
    P = pinned_rows if hot_first else 0
    out = np.zeros((B, T * dim), dtype=np.float32)
    for t in range(T):
        for b in range(B):
            k = t * B + b
            lo = int(offsets[k])
            hi = int(offsets[k + 1]) if k + 1 < len(offsets) else len(indices)
            acc = np.zeros(dim, dtype=np.float32)
            for j in range(lo, hi):
                r = int(indices[j])
                assert 0 <= r < table_rows[t], (t, r)
                if P:
                    g = t * P + r if r < P else T * P + int(sum(n - P for n in table_rows[:t])) + r - P
                else:
                    g = int(starts[t]) + r
                acc += w[g] * (per_sample_weights[j] if per_sample_weights is not None else 1.0)
            if mode == "mean" and hi > lo:
                acc /= hi - lo
            out[b, t * dim:(t + 1) * dim] = acc
    return out.astype({"fp32": np.float32, "fp16": np.float16, "bf16": np.float32}[out_dtype])


class EmbeddingBag(OpRun):
    op_domain = C.DOMAIN

    def _run(self, weights, *lookups, **attrs):
        a = {}
        for att in self.onnx_node.attribute:
            v = onnx.helper.get_attribute_value(att)
            a[att.name] = v.decode() if isinstance(v, bytes) else v
        a = C.validate_attributes({k: list(v) if k == "table_rows" else v for k, v in a.items()})
        T = len(a["table_rows"])
        if T > 1 and len(lookups) in (2 * T, 3 * T):  # per-table form -> packed form (valid inputs)
            ids, offs, psws, base = [], [], [], 0
            for t in range(T):
                idx, off = lookups[t], lookups[T + t]
                bags = len(off) - a["include_last_offset"]
                end = int(off[bags]) if a["include_last_offset"] else len(idx)
                ids.append(idx[:end])
                offs.append(off[:bags] + base)
                if len(lookups) == 3 * T:
                    psws.append(lookups[2 * T + t][:end])
                base += end
            lookups = (np.concatenate(ids), np.concatenate(offs)) + ((np.concatenate(psws),) if psws else ())
            a["include_last_offset"] = 0
        indices, offsets, per_sample_weights = (tuple(lookups) + (None,))[:3]
        return (reference_embedding_bag(weights, indices, offsets, per_sample_weights, **a),)


class DotInteraction(OpRun):
    """numpy reference of dlrm_deploy::DotInteraction (the fused dot interaction, docs/op_contract.md)."""

    op_domain = C.DOMAIN

    def _run(self, *parts, dim=None, pairs=None, prefix=-1):
        v = np.concatenate(parts, axis=1)
        b = v.shape[0]
        n = v.shape[1] // dim
        v = v.reshape(b, n, dim)
        dots = np.einsum("bid,bjd->bij", v, v).reshape(b, n * n)[:, np.asarray(pairs, dtype=np.int64)]
        return (np.concatenate([parts[prefix], dots], axis=1) if prefix >= 0 else dots,)


class Mlp(OpRun):
    """numpy reference of dlrm_deploy::Mlp (a fused chain of Linear layers, docs/op_contract.md)."""

    op_domain = C.DOMAIN

    def _run(self, x, *params, activations=None):
        y = x
        for w, b, code in zip(params[0::2], params[1::2], activations):
            y = y @ w.T + b
            if code == C.MLP_ACTIVATIONS["relu"]:
                y = np.maximum(y, 0)
            elif code == C.MLP_ACTIVATIONS["sigmoid"]:
                y = 1 / (1 + np.exp(-y))
        return (y.astype(x.dtype),)


def run_reference(path, feeds):
    return ReferenceEvaluator(str(path), new_ops=[EmbeddingBag, DotInteraction, Mlp]).run(None, feeds)[0]


def feeds_of(model_path, dense, indices, offsets):
    m = onnx.load(str(model_path), load_external_data=False)
    names = [i.name for i in m.graph.input]
    values = [dense.numpy()] + [i.numpy() for i in indices] + [o.numpy() for o in offsets]
    assert len(names) == len(values), names
    return dict(zip(names, values))


def op_nodes(path):
    m = onnx.load(str(path), load_external_data=False)
    return m, [n for n in m.graph.node if n.domain == C.DOMAIN and n.op_type == C.OP_TYPE]


def with_decoded_tables(model: DLRM, dtype: str) -> DLRM:
    """The model with tables rounded the way the exported storage stores them."""
    import copy

    m = copy.deepcopy(model)
    for eb in m.embeddings:
        w = eb.weight.detach()
        if dtype == "int8":
            dec = torch.from_numpy(dequantize_int8_rowwise(quantize_int8_rowwise(w), w.shape[1]))
        else:
            dec = w.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]).float()
        eb.weight.data.copy_(dec)
    return m


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return DLRM("small", seed=0)


@pytest.fixture(scope="module")
def example():
    return make_inputs("small", 8, seed=1)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("batching", [True, False], ids=["batched", "per_table"])
@pytest.mark.parametrize("hot", [False, True], ids=["plain", "hot"])
def test_export_small(tmp_path, small, example, dtype, batching, hot):
    cfg = small.config
    hot_sample = make_inputs("small", 64, source="zipf:1.2", seed=7) if hot else None
    path = tmp_path / "m.onnx"
    info = export_onnx(small, example, path, dtype=dtype, table_batching=batching, hot_rows_from=hot_sample)
    model, nodes = op_nodes(path)
    onnx.checker.check_model(str(path), full_check=True)
    assert not [n for n in model.graph.node if n.op_type == "ATen" or n.domain.startswith("org.pytorch")]
    assert {o.domain: o.version for o in model.opset_import}[C.DOMAIN] == 1
    assert len(nodes) == (1 if batching else cfg.num_tables)
    assert info.op_nodes == len(nodes)
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    assert dims["dense"][0].dim_param and dims["dense"][1].dim_value == cfg.num_dense  # dynamic batch
    assert all(dims[f"indices_{t}"][0].dim_param and dims[f"offsets_{t}"][0].dim_param for t in range(4))
    for n in nodes:
        attrs = {a.name for a in n.attribute}
        assert attrs == {f.name for f in C.FIELDS}
        split = next(a.i for a in n.attribute if a.name == "split_scales")
        assert split == 0  # dim 16: int8 keeps the row form (split_scales=1 from dim 64 on)
    if hot:
        assert info.pinned_rows > 0 and all(t.reordered for t in info.tables)
        assert sum(n.op_type == "Gather" for n in model.graph.node) >= cfg.num_tables  # the remaps
        assert all(next(a.i for a in n.attribute if a.name == "hot_first") == 1 for n in nodes)
    # Shape inference knows the op's output: [batch, T*D].
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for n in nodes:
        dims = vi[n.output[0]].type.tensor_type.shape.dim
        T = len(next(a.ints for a in n.attribute if a.name == "table_rows"))
        assert len(dims) == 2 and dims[1].dim_value == T * cfg.dim
    # Numbers: other batch and variable bag lengths (empty bags included) than at export.
    dense, idx, off = make_inputs("small", 5, pooling="var:6", seed=3, source="zipf:1.05")
    got = run_reference(path, feeds_of(path, dense, idx, off))
    with torch.no_grad():
        want = with_decoded_tables(small, dtype)(dense, idx, off).numpy()
        orig = small(dense, idx, off).numpy()
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, orig, rtol=0, atol={"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-2, "int8": 1e-2}[dtype])


class Generic(nn.Module):
    """A non-DLRM model: sum with per-sample weights and include_last_offset, mean, a 2-D input,
    two embedding dims, int32 ids."""

    def __init__(self):
        super().__init__()
        self.a1 = nn.EmbeddingBag(50, 8, mode="sum", include_last_offset=True)
        self.a2 = nn.EmbeddingBag(70, 8, mode="sum", include_last_offset=True)
        self.m1 = nn.EmbeddingBag(30, 8, mode="mean")
        self.m2 = nn.EmbeddingBag(40, 8, mode="mean")
        self.c = nn.EmbeddingBag(20, 4, mode="sum")
        self.head = nn.Linear(8 * 4 + 4, 3)

    def forward(self, i1, o1, w1, i2, o2, w2, i3, o3, i4, o4, grid):
        parts = [self.a1(i1, o1, per_sample_weights=w1), self.a2(i2, o2, per_sample_weights=w2),
                 self.m1(i3, o3), self.m2(i4, o4), self.c(grid)]
        return self.head(torch.cat(parts, dim=1))


def generic_inputs(batch, seed, index_dtype=torch.int32):
    rng = np.random.default_rng(seed)
    (i1, i2), (o1, o2) = make_indices([50, 70], batch, pooling="var:3", seed=seed, index_dtype=index_dtype,
                                      include_last_offset=True)
    (i3, i4), (o3, o4) = make_indices([30, 40], batch, pooling="var:2", seed=seed + 1, index_dtype=index_dtype)
    w1 = torch.from_numpy(rng.random(i1.numel(), dtype=np.float32))
    w2 = torch.from_numpy(rng.random(i2.numel(), dtype=np.float32))
    grid = torch.from_numpy(rng.integers(0, 20, size=(batch, 3))).to(index_dtype)
    return (i1, o1, w1, i2, o2, w2, i3, o3, i4, o4, grid)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "per_table"])
def test_export_generic_module(tmp_path, batching):
    torch.manual_seed(0)
    model = Generic().eval()
    path = tmp_path / "g.onnx"
    hot = [generic_inputs(16, 11), generic_inputs(16, 12)]
    info = export_onnx(model, generic_inputs(6, 1), path, table_batching=batching, hot_rows_from=hot)
    m, nodes = op_nodes(path)
    onnx.checker.check_model(str(path), full_check=True)
    # Groups: (a1, a2) sum + weights, (m1, m2) mean, (c) dim 4.
    assert len(nodes) == (3 if batching else 5)
    if batching:
        assert sorted(map(sorted, info.groups)) == [["a1", "a2"], ["c"], ["m1", "m2"]]
    x = generic_inputs(9, 5)
    feeds = dict(zip([i.name for i in m.graph.input], [t.numpy() for t in x]))
    got = run_reference(path, feeds)
    with torch.no_grad():
        want = model(*[t.long() if t.dtype == torch.int32 else t for t in x]).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_table_map_metadata(tmp_path, small, example):
    path = tmp_path / "m.onnx"
    export_onnx(small, example, path)
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    tables = json.loads(meta["dlrm_deploy.tables"])
    assert [t["rows"] for t in tables] == list(small.config.table_rows)
    assert [t["indices"] for t in tables] == [f"indices_{i}" for i in range(4)]
    assert [t["offsets"] for t in tables] == [f"offsets_{i}" for i in range(4)]


def test_external_data(tmp_path, small, example):
    path = tmp_path / "ext.onnx"
    info = export_onnx(small, example, path, external_data=True, dtype="fp16")
    assert info.external_data and (tmp_path / info.external_data).exists()
    dense, idx, off = make_inputs("small", 4, seed=9)
    got = run_reference(path, feeds_of(path, dense, idx, off))
    with torch.no_grad():
        want = with_decoded_tables(small, "fp16")(dense, idx, off).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pinned", [0, 7])
def test_external_data_packs_like_in_memory(tmp_path, small, example, pinned):
    """Table batching streams the packed tables into the external data file one table at a time;
    the bytes must be those of the in-memory packing (plain and hot_first layouts)."""
    blobs = []
    for ext in (False, True):
        path = tmp_path / f"p{int(ext)}.onnx"
        export_onnx(small, example, path, external_data=ext, pinned_rows=pinned or None)
        m = onnx.load(str(path))
        (w,) = [t for t in m.graph.initializer if t.name.endswith("_weights")]
        blobs.append(numpy_helper.to_array(w, base_dir=str(tmp_path)))
    np.testing.assert_array_equal(blobs[0], blobs[1])


def test_trace_hot_rows_and_pinned_budget(tmp_path, small, example):
    trace = tmp_path / "trace.txt"
    rng = np.random.default_rng(0)
    hot_ids = rng.integers(0, 40, size=5000)  # 40 hot rows, valid in every table
    cold = rng.integers(0, 4000, size=500)
    trace.write_text("\n".join(map(str, np.concatenate([hot_ids, cold]))) + "\n")
    path = tmp_path / "t.onnx"
    info = export_onnx(small, example, path, hot_rows_from=str(trace))
    assert 0 < info.pinned_rows <= 60
    assert min(t.hot_coverage for t in info.tables) >= 0.85
    # A tiny L2 budget caps the pinned rows: 4 tables x 16 floats x 4 B = 256 B per pinned row.
    info = export_onnx(small, example, path, hot_rows_from=str(trace), l2_budget_bytes=256 * 10)
    assert info.pinned_rows == 10
    dense, idx, off = make_inputs("small", 6, source=f"trace:{trace}", seed=2)
    got = run_reference(path, feeds_of(path, dense, idx, off))
    with torch.no_grad():
        want = small(dense, idx, off).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_quantize_int8_rowwise_layout():
    w = torch.randn(5, 20)
    w[2] = 0.25  # constant row
    q = quantize_int8_rowwise(w)
    assert q.dtype == torch.uint8 and q.shape == (5, C.int8_row_bytes(20)) == (5, 32)
    assert (q[:, 28:] == 0).all()
    dec = dequantize_int8_rowwise(q, 20)
    scale = (w.max(1).values - w.min(1).values) / 255
    assert np.all(np.abs(dec - w.numpy()) <= scale.numpy()[:, None] / 2 + 1e-6)
    assert np.allclose(dec[2], 0.25)


def test_index_sources(tmp_path):
    cfg = get_config("small")
    trace = tmp_path / "tr.txt"
    trace.write_text("\n".join(["5", "999999", "1500", "7"]) + "\n")
    idx, off = make_indices(cfg.table_rows, 3, pooling=2, source=f"trace:{trace}")
    # table 0 has 1000 rows: 999999 and 1500 dropped; reading continues where the last table stopped.
    assert idx[0].tolist() == [5, 7, 5, 7, 5, 7]
    assert idx[1].tolist()[:3] == [5, 1500, 7]
    assert off[0].tolist() == [0, 2, 4]
    idx, _ = make_indices([100000], 1, pooling=20000, source="zipf:1.2", seed=0)
    counts = np.bincount(idx[0].numpy(), minlength=100000)
    assert np.sort(counts)[::-1][:100].sum() > 0.5 * 20000  # skewed
    with pytest.raises(ValueError):
        make_indices([10], 1, source="gauss")


def test_ort_with_custom_op_library(tmp_path, small, example):
    """The same file in ONNX Runtime with our op library, where it is built."""
    try:
        ort_mod = importlib.import_module("dlrm_deploy.runtime.ort")
        lib = ort_mod.custom_op_library()
    except Exception as e:  # noqa: BLE001 - any missing piece means: not available here
        pytest.skip(f"ONNX Runtime custom-op library not available: {e}")
    path = tmp_path / "m.onnx"
    export_onnx(small, example, path, dtype="int8", hot_rows_from=example)
    sess = ort_mod.ort_session(str(path), device="cpu")
    dense, idx, off = make_inputs("small", 7, pooling="var:5", seed=4)
    got = sess.run(feeds_of(path, dense, idx, off))[0]
    want = run_reference(path, feeds_of(path, dense, idx, off))
    assert lib
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
