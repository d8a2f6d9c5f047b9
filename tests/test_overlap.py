"""export_onnx(overlap=True): the lookups beside the dense layers (EmbeddingBag overlap=1, joined by
the fused DotInteraction, or by a Join where the interaction is not fused).
On the CPU (any machine) the graph must compute exactly what the plain export computes and still
reject bad input; on the CUDA provider (GPU machines) the same, plus CUDA-graph sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dlrm_deploy import contract as C
from dlrm_deploy.export.dlrm import DLRM, get_config, make_inputs
from dlrm_deploy.export.onnx_export import export_onnx
from dlrm_deploy.runtime import ort as dd_ort

DEVICES = ["cpu"] + (["cuda"] if dd_ort.cuda_available() else [])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = get_config("small")
    model = DLRM(cfg, seed=0).eval()
    folder = tmp_path_factory.mktemp("overlap")
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "plain.onnx")
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "plain_join.onnx", fuse_interaction=False)
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "overlap.onnx", overlap=True)
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "overlap_join.onnx", overlap=True,
                fuse_interaction=False)
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "plain_nomlp.onnx", fuse_mlp=False)
    export_onnx(model, make_inputs(cfg, 16, seed=0), folder / "overlap_nomlp.onnx", overlap=True, fuse_mlp=False)
    return cfg, model, folder


FILES = ["overlap.onnx", "overlap_join.onnx", "overlap_nomlp.onnx"]
PLAIN = {"overlap.onnx": "plain.onnx", "overlap_join.onnx": "plain_join.onnx", "overlap_nomlp.onnx": "plain_nomlp.onnx"}


def _int(node, name):
    return next((a.i for a in node.attribute if a.name == name), None)


def _feeds(cfg, model, batch, seed):
    dense, indices, offsets = make_inputs(cfg, batch, seed=seed, pooling=8)
    feeds = {"dense": dense.numpy()}
    feeds.update({f"indices_{t}": i.numpy() for t, i in enumerate(indices)})
    feeds.update({f"offsets_{t}": o.numpy() for t, o in enumerate(offsets)})
    with torch.no_grad():
        return feeds, model(dense, indices, offsets).numpy()


def _beside(nodes, joiner):
    """The op right before the node that joins it (ONNX Runtime then runs the op first, forking its
    stream before the bottom MLP), overlap=2 (the joining node launches the lookups, after the MLP),
    the fused bottom MLP that feeds the joiner marked beside=1, no other Mlp marked."""
    kinds = [(n.domain, n.op_type) for n in nodes]
    op_at = kinds.index((C.DOMAIN, C.OP_TYPE))
    assert kinds.count((C.DOMAIN, C.OP_TYPE)) == 1 and kinds[op_at + 1] == (C.DOMAIN, joiner)
    op, join = nodes[op_at], nodes[op_at + 1]
    assert _int(op, "overlap") == 2 and op.output[0] in join.input
    mlps = [n for n in nodes if (n.domain, n.op_type) == (C.DOMAIN, C.MLP_OP_TYPE)]
    assert len(mlps) == 2
    bottom = [m for m in mlps if m.output[0] in join.input]
    assert len(bottom) == 1 and _int(bottom[0], "beside") == 1
    assert [_int(m, "beside") for m in mlps if m is not bottom[0]] == [None]
    return kinds


def test_graph_structure_fused(exported):
    """The default export fuses the interaction and the MLPs: the DotInteraction joins the op's
    stream (no Join), the bottom MLP runs beside the lookups."""
    _cfg, _model, folder = exported
    kinds = _beside(list(onnx.load(str(folder / "overlap.onnx")).graph.node), C.INTERACTION_OP_TYPE)
    assert (C.DOMAIN, C.JOIN_OP_TYPE) not in kinds


def test_graph_structure(exported):
    _cfg, _model, folder = exported
    _beside(list(onnx.load(str(folder / "overlap_join.onnx")).graph.node), C.JOIN_OP_TYPE)
    plain = [(n.domain, n.op_type) for n in onnx.load(str(folder / "plain.onnx")).graph.node]
    assert (C.DOMAIN, C.JOIN_OP_TYPE) not in plain


def test_graph_structure_without_fused_mlp(exported):
    """No fused bottom MLP to put beside: overlap=1, the op right before the interaction that joins
    it, so that ONNX Runtime launches the lookups first."""
    _cfg, _model, folder = exported
    nodes = list(onnx.load(str(folder / "overlap_nomlp.onnx")).graph.node)
    kinds = [(n.domain, n.op_type) for n in nodes]
    op_at = kinds.index((C.DOMAIN, C.OP_TYPE))
    assert kinds[op_at + 1] == (C.DOMAIN, C.INTERACTION_OP_TYPE)
    assert _int(nodes[op_at], "overlap") == 1  # launched at once
    assert nodes[op_at].output[0] in nodes[op_at + 1].input
    assert (C.DOMAIN, C.MLP_OP_TYPE) not in kinds


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("device", DEVICES)
def test_overlap_matches_plain_and_rejects_bad_input(exported, device, name):
    cfg, model, folder = exported
    plain = dd_ort.ort_session(folder / PLAIN[name], device=device)
    over = dd_ort.ort_session(folder / name, device=device)
    for batch, seed in [(32, 1), (5, 2), (64, 3)]:
        feeds, ref = _feeds(cfg, model, batch, seed)
        (a,) = plain.run(feeds)
        (b,) = over.run(feeds)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-5)
    bad = dict(feeds)
    bad["indices_2"] = feeds["indices_2"].copy()
    bad["indices_2"][3] = -4
    with pytest.raises(Exception, match=r"index -4 at position 3 of indices 'indices_2'"):
        over.run(bad)
    (b,) = over.run(feeds)  # the session carries on
    np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")
@pytest.mark.parametrize("name", FILES)
def test_overlap_in_cuda_graph(exported, name):
    cfg, model, folder = exported
    sess = dd_ort.ort_session(folder / name, device="cuda", cuda_graph=True)
    for seed in (1, 2, 3):
        feeds, ref = _feeds(cfg, model, 32, seed)
        (out,) = sess.run(feeds)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    bad = dict(feeds)
    bad["offsets_1"] = feeds["offsets_1"].copy()
    bad["offsets_1"][0] = 2
    with pytest.raises(RuntimeError, match="first offset of offsets 'offsets_1'"):
        sess.run(bad)
    (out,) = sess.run(feeds)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
