"""Real-world model structures exported unchanged (CPU): a model shaped like facebookresearch/dlrm's
DLRM_Net (numpy table sizes, offsets stacked as one [T, B] tensor, a list of per-table id tensors),
TorchRec's EmbeddingBagCollection and DLRM with KeyedJaggedTensor inputs, and the exporter's
promises around them: the user's model is not modified, the batch stays dynamic or a warning names
the input that fixed it, TorchRec's quantized EmbeddingBagCollection keeps FBGEMM's int8/fp16 rows
exactly (other quantized forms are refused in one line). Exported files run in
ONNX Runtime with our op library and match PyTorch eager; `dlrm-deploy run` feeds them valid inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from torch import nn

from dlrm_deploy import cli
from dlrm_deploy.export import export_onnx
from dlrm_deploy.runtime.ort import ort_session
from dlrm_deploy.runtime.run_cli import random_inputs

try:  # `make venv` installs torchrec (CPU, with fbgemm-gpu-cpu): CI runs these tests
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.models.dlrm import DLRM as TorchRecDLRM
except ImportError as _e:
    EmbeddingBagCollection = KeyedJaggedTensor = None
    _TORCHREC_MISSING = f"torchrec not importable ({_e}); `make venv` installs it"
else:
    _TORCHREC_MISSING = None
needs_torchrec = pytest.mark.skipif(_TORCHREC_MISSING is not None, reason=str(_TORCHREC_MISSING))


def _dims(path) -> dict[str, list]:
    m = onnx.load(str(path), load_external_data=False)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.input) + list(m.graph.output)}


def _tables_meta(path) -> list[dict]:
    m = onnx.load(str(path), load_external_data=False)
    return json.loads({p.key: p.value for p in m.metadata_props}["dlrm_deploy.tables"])


# ---------------------------------------------------------------------------------------------
# A model with DLRM_Net's structure: sizes as numpy integers, apply_emb looping over the list of
# id tensors with row k of the stacked offsets, dot interaction, sigmoid.


class NetShaped(nn.Module):
    def __init__(self, m_spa: int, ln_emb: np.ndarray, ln_bot: np.ndarray, ln_top: np.ndarray, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb_l = nn.ModuleList()
        for n in ln_emb:  # numpy.int64 sizes, numpy-initialised weights
            bag = nn.EmbeddingBag(n, m_spa, mode="sum", sparse=True)
            bag.weight.data = torch.tensor(rng.uniform(-np.sqrt(1 / n), np.sqrt(1 / n), (n, m_spa)).astype(np.float32))
            self.emb_l.append(bag)
        self.v_W_l = [None] * len(ln_emb)
        self.bot_l = self._mlp(ln_bot, last_sigmoid=False)
        self.top_l = self._mlp(ln_top, last_sigmoid=True)

    @staticmethod
    def _mlp(ln: np.ndarray, last_sigmoid: bool) -> nn.Sequential:
        layers = []
        for i in range(len(ln) - 1):
            layers.append(nn.Linear(int(ln[i]), int(ln[i + 1])))
            layers.append(nn.Sigmoid() if last_sigmoid and i == len(ln) - 2 else nn.ReLU())
        return nn.Sequential(*layers)

    def apply_emb(self, lS_o, lS_i):
        ly = []
        for k, ids in enumerate(lS_i):
            ly.append(self.emb_l[k](ids, lS_o[k], per_sample_weights=self.v_W_l[k]))
        return ly

    def forward(self, dense_x, lS_o, lS_i):
        x = self.bot_l(dense_x)
        ly = self.apply_emb(lS_o, lS_i)
        batch, d = x.shape
        t = torch.cat([x] + ly, dim=1).view((batch, -1, d))
        z = torch.bmm(t, torch.transpose(t, 1, 2))
        n = z.shape[1]
        li = torch.tensor([i for i in range(n) for j in range(i)])
        lj = torch.tensor([j for i in range(n) for j in range(i)])
        return self.top_l(torch.cat([x, z[:, li, lj]], dim=1))


LN_EMB = np.array([40, 60, 90])
M_SPA = 8


def net_shaped() -> NetShaped:
    t = len(LN_EMB)
    return NetShaped(M_SPA, LN_EMB, np.array([5, 16, M_SPA]), np.array([M_SPA + t * (t + 1) // 2, 8, 1]))


def net_inputs(batch: int, seed: int, pooling: int = 3, min_len: int = 0):
    """(dense [B, 5], lS_o [T, B] stacked offsets, lS_i list of T id tensors), as its data loader;
    bags of min_len..2*pooling ids."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, 5, generator=g)
    lengths = torch.randint(min_len, 2 * pooling + 1, (len(LN_EMB), batch), generator=g)
    offsets = torch.cat([torch.zeros(len(LN_EMB), 1, dtype=torch.int64), lengths.cumsum(1)[:, :-1]], dim=1)
    ids = [torch.randint(0, int(n), (int(lengths[k].sum()),), generator=g) for k, n in enumerate(LN_EMB)]
    return dense, offsets, ids


def test_dlrm_net_structure(tmp_path):
    """numpy sizes export; the batch of the stacked offsets (dim 1) stays dynamic; ORT matches eager
    at another batch; the metadata names the offsets row of each table; `run` feeds it."""
    model = net_shaped().train()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was specialised: no warning
        info = export_onnx(model, net_inputs(6, 1), path)
    assert model.training and all(isinstance(m, nn.EmbeddingBag) for m in model.emb_l)
    assert info.tables[0].rows == 40 and type(info.tables[0].rows) is int
    dims = _dims(path)
    names = list(dims)
    dense, offsets = names[0], names[1]
    assert isinstance(dims[dense][0], str) and dims[dense][1] == 5
    assert isinstance(dims[offsets][1], str) and dims[offsets][1] == dims[dense][0]  # [T, B]: B is the batch
    tables = _tables_meta(path)
    assert [t["offsets_row"] for t in tables] == [0, 1, 2] and {t["offsets"] for t in tables} == {offsets}
    assert [t["rows"] for t in tables] == [40, 60, 90]

    sess = ort_session(str(path), device="cpu")
    x = net_inputs(11, 2, pooling=5)
    feeds = dict(zip(sess.input_names, [x[0].numpy(), x[1].numpy()] + [i.numpy() for i in x[2]]))
    model.eval()
    with torch.no_grad():
        want = model(*x).numpy()
    np.testing.assert_allclose(sess.run(feeds)[0], want, rtol=1e-5, atol=1e-6)

    feeds = random_inputs(str(path), batch=7, seed=3)
    assert feeds[offsets].shape == (3, 7)
    out = sess.run(feeds)[0]
    assert out.shape == (7, 1)
    ids = [torch.from_numpy(feeds[n]) for n in names[2:5]]
    with torch.no_grad():  # nn.EmbeddingBag accepts them too: the feeds are valid
        np.testing.assert_allclose(out, model(torch.from_numpy(feeds[dense]), torch.from_numpy(feeds[offsets]),
                                              ids).numpy(), rtol=1e-5, atol=1e-6)
    assert cli.main(["run", str(path), "--batch", "5", "--runs", "2", "--warmup", "0", "--device", "cpu"]) == 0


def test_dlrm_net_stacked_ids(tmp_path):
    """Its Criteo loader's form: one id per bag, ids stacked [T, B] too (apply_emb iterates them)."""
    model = net_shaped().eval()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, generator=g), torch.arange(6).repeat(3, 1),
         torch.stack([torch.randint(0, int(n), (6,), generator=g) for n in LN_EMB]))
    path = tmp_path / "stacked.onnx"
    export_onnx(model, x, path)
    tables = _tables_meta(path)
    assert [(t["indices"], t["indices_row"], t["offsets"], t["offsets_row"]) for t in tables] == \
        [("ls_i", k, "ls_o", k) for k in range(3)]
    feeds = random_inputs(str(path), batch=9, pooling=2, seed=4)
    assert feeds["ls_i"].shape == (3, 18) and feeds["ls_o"].shape == (3, 9)
    with torch.no_grad():
        want = model(*[torch.from_numpy(feeds[k]) for k in ("dense_x", "ls_o", "ls_i")]).numpy()
    np.testing.assert_allclose(ort_session(str(path), device="cpu").run(feeds)[0], want, rtol=1e-5, atol=1e-6)


class PerSampleCalibration(nn.Module):
    """A model that only works at its example's batch (a per-sample buffer): torch.export fixes it."""

    def __init__(self, batch: int):
        super().__init__()
        self.net = net_shaped()
        self.register_buffer("calibration", torch.linspace(0.5, 1.5, batch)[:, None])

    def forward(self, dense_x, lS_o, lS_i):
        return self.net(dense_x, lS_o, lS_i) * self.calibration


def test_batch_of_one_stays_dynamic(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(net_shaped(), net_inputs(1, 1, min_len=2), tmp_path / "b1.onnx")
    dims = _dims(tmp_path / "b1.onnx")
    assert isinstance(dims["dense_x"][0], str) and dims["ls_o"][1] == dims["dense_x"][0]


def test_fixed_batch_is_reported(tmp_path):
    """When torch.export fixes the batch, a warning names the inputs whose dimension it fixed."""
    with pytest.warns(UserWarning, match=r"batch is fixed.*'dense_x' dim 0.*'ls_o' dim 1"):
        export_onnx(PerSampleCalibration(6), net_inputs(6, 1), tmp_path / "b6.onnx")
    assert _dims(tmp_path / "b6.onnx")["dense_x"][0] == 6


def test_model_is_not_modified(tmp_path):
    """Training flags (per module), parameters and modules stay as they were."""
    model = net_shaped().train()
    model.bot_l.eval()  # a mixed state survives too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    export_onnx(model, net_inputs(4, 1), tmp_path / "m.onnx", hot_rows_from=[net_inputs(8, 2)], pinned_rows=4)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(type(m) is nn.EmbeddingBag for m in model.emb_l)


# ---------------------------------------------------------------------------------------------
# TorchRec


def _ebc(weighted: bool = False) -> EmbeddingBagCollection:
    torch.manual_seed(0)
    return EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_shared", embedding_dim=8, num_embeddings=30, feature_names=["f0", "f2"]),
        EmbeddingBagConfig(name="t1", embedding_dim=8, num_embeddings=50, feature_names=["f1"])],
        is_weighted=weighted, device=torch.device("cpu"))


def _kjt(batch: int, seed: int, weighted: bool = False) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (3 * batch,), generator=g)
    rows = [30, 50, 30]
    values = torch.cat([torch.randint(0, rows[k], (int(lengths[k * batch:(k + 1) * batch].sum()),), generator=g)
                        for k in range(3)])
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=["f0", "f1", "f2"], values=values, lengths=lengths,
                                               weights=weights)


class PooledValues(nn.Module):
    """An EmbeddingBagCollection whose KeyedTensor output is returned as its [B, F*D] values."""

    def __init__(self, ebc: EmbeddingBagCollection):
        super().__init__()
        self.ebc = ebc

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return self.ebc(features).values()


def _kjt_feeds(sess, kjt: KeyedJaggedTensor, meta: dict) -> dict:
    feeds = {meta["values"]: kjt.values().numpy(), meta["lengths"]: kjt.lengths().numpy()}
    if meta["weights"]:
        feeds[meta["weights"]] = kjt.weights().numpy()
    assert set(feeds) <= set(sess.input_names)
    return feeds


@needs_torchrec
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("batching", [True, False], ids=["batched", "per_table"])
def test_torchrec_ebc(tmp_path, weighted, batching):
    model = PooledValues(_ebc(weighted)).eval()
    path = tmp_path / "ebc.onnx"
    export_onnx(model, (_kjt(4, 1, weighted),), path, table_batching=batching)
    m = onnx.load(str(path))
    assert len(m.graph.input) == (3 if weighted else 2)  # values, lengths (, weights): no cached offsets
    stored = [list(t.dims) for t in m.graph.initializer if len(t.dims) == 2]
    assert sorted(stored) == [[30, 8], [50, 8]]  # the shared table is stored once
    tables = _tables_meta(path)
    assert [t["feature"] for t in tables] == ["f0", "f2", "f1"]
    kjt_meta = tables[0]["kjt"]
    assert kjt_meta["keys"] == ["f0", "f1", "f2"] and kjt_meta["rows"] == [30, 50, 30]
    assert (kjt_meta["weights"] is not None) == weighted

    sess = ort_session(str(path), device="cpu")
    kjt = _kjt(9, 2, weighted)
    with torch.no_grad():
        want = model(kjt).numpy()
    got = sess.run(_kjt_feeds(sess, kjt, kjt_meta))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    feeds = random_inputs(str(path), batch=6, seed=1)
    lengths = feeds[kjt_meta["lengths"]]
    assert lengths.shape == (18,) and feeds[kjt_meta["values"]].shape == (lengths.sum(),)
    rebuilt = KeyedJaggedTensor(keys=kjt_meta["keys"], values=torch.from_numpy(feeds[kjt_meta["values"]]),
                                lengths=torch.from_numpy(feeds[kjt_meta["lengths"]]),
                                weights=torch.from_numpy(feeds[kjt_meta["weights"]]) if weighted else None)
    with torch.no_grad():  # the generated ids are valid for every key's table
        np.testing.assert_allclose(sess.run(feeds)[0], model(rebuilt).numpy(), rtol=1e-5, atol=1e-6)


@needs_torchrec
def test_torchrec_dlrm(tmp_path):
    torch.manual_seed(0)
    model = TorchRecDLRM(embedding_bag_collection=_ebc(), dense_in_features=5, dense_arch_layer_sizes=[16, 8],
                         over_arch_layer_sizes=[16, 1]).eval()
    path = tmp_path / "trdlrm.onnx"
    export_onnx(model, (torch.randn(4, 5), _kjt(4, 1)), path)
    dims = _dims(path)
    assert isinstance(dims["dense_features"][0], str) and dims["dense_features"][1] == 5
    kjt_meta = _tables_meta(path)[0]["kjt"]
    sess = ort_session(str(path), device="cpu")
    dense, kjt = torch.randn(13, 5), _kjt(13, 3)
    with torch.no_grad():
        want = model(dense, kjt).numpy()
    got = sess.run({"dense_features": dense.numpy(), **_kjt_feeds(sess, kjt, kjt_meta)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert cli.main(["run", str(path), "--batch", "5", "--runs", "2", "--warmup", "0", "--device", "cpu"]) == 0


@needs_torchrec
@pytest.mark.parametrize("qdtype,dtype", [("qint8", "int8"), ("half", "fp16")])
def test_torchrec_quantized_ebc(tmp_path, qdtype, dtype):
    """torchrec.quant.EmbeddingBagCollection (FBGEMM rows): converted exactly (int8: codes, fp16 scale
    and bias -> our fp32 scale and bias), so ONNX Runtime matches the quantized model itself."""
    from torchrec.inference.modules import quantize_embeddings

    model = quantize_embeddings(PooledValues(_ebc(weighted=True)), dtype=getattr(torch, qdtype), inplace=False)
    quant_type = type(model.ebc)
    path = tmp_path / "q.onnx"
    export_onnx(model, (_kjt(4, 1, weighted=True),), path, dtype=dtype)
    assert type(model.ebc) is quant_type  # the user's model is untouched
    m = onnx.load(str(path))
    stored = sorted((list(t.dims), t.data_type) for t in m.graph.initializer if len(t.dims) == 2)
    if dtype == "int8":  # dim 8 codes + fp32 scale + fp32 bias = 16 bytes per row
        assert stored == [([30, 16], TensorProto.UINT8), ([50, 16], TensorProto.UINT8)]
    else:
        assert stored == [([30, 8], TensorProto.FLOAT16), ([50, 8], TensorProto.FLOAT16)]
    sess = ort_session(str(path), device="cpu")
    kjt = _kjt(9, 2, weighted=True)
    with torch.no_grad():
        want = model(kjt).numpy()
    got = sess.run(_kjt_feeds(sess, kjt, _tables_meta(path)[0]["kjt"]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@needs_torchrec
def test_torchrec_quantized_dlrm_and_storage_warning(tmp_path):
    from torchrec.inference.modules import quantize_embeddings

    torch.manual_seed(0)
    model = TorchRecDLRM(embedding_bag_collection=_ebc(), dense_in_features=5, dense_arch_layer_sizes=[16, 8],
                         over_arch_layer_sizes=[16, 1]).eval()
    model = quantize_embeddings(model, dtype=torch.qint8, inplace=False)
    with pytest.warns(UserWarning, match=r"is int8 in the quantized model; exporting it as fp32"):
        export_onnx(model, (torch.randn(4, 5), _kjt(4, 1)), tmp_path / "fp32.onnx")
    path = tmp_path / "q.onnx"
    export_onnx(model, (torch.randn(4, 5), _kjt(4, 1)), path, dtype="int8")
    sess = ort_session(str(path), device="cpu")
    dense, kjt = torch.randn(7, 5), _kjt(7, 3)
    with torch.no_grad():
        want = model(dense, kjt).numpy()
    got = sess.run({"dense_features": dense.numpy(), **_kjt_feeds(sess, kjt, _tables_meta(path)[0]["kjt"])})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_torchrec
def test_torchrec_quantized_unsupported_is_refused(tmp_path):
    """Row formats we do not store (int4) are refused at export in one line saying what to do."""
    from torchrec.inference.modules import quantize_embeddings

    model = quantize_embeddings(PooledValues(_ebc()), dtype=torch.quint4x2, inplace=False)
    with pytest.raises(NotImplementedError, match=r"int4.*quantize it to int8 or fp16") as e:
        export_onnx(model, (_kjt(4, 1),), tmp_path / "q4.onnx")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())
