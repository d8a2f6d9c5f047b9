"""The small DLRM exported with and without one of the export's fusion passes (fuse_interaction,
fuse_mlp), and the checks the passes' tests share: the fused file against the plain one and
PyTorch, in a CUDA graph, and the export CLI's default."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from dlrm_deploy.export import export_onnx
from dlrm_deploy.export.dlrm import DLRM, get_config, make_inputs
from dlrm_deploy.runtime import ort as dd_ort
from dlrm_deploy.runtime.accuracy import onnx_feeds


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


def small_files(tmp_path_factory, name, fuse_pass, nodes, unfused_option):
    """(cfg, model, plain path, fused path, fused proto): plain exported with unfused_option=False,
    fused by the default export; fuse_pass on the plain graph makes nodes nodes and the same ops."""
    cfg = get_config("small")
    model = DLRM(cfg, seed=0).eval()
    folder = tmp_path_factory.mktemp(name)
    plain, fused = folder / "plain.onnx", folder / "fused.onnx"
    export_onnx(model, make_inputs(cfg, 16, seed=0), plain, **{unfused_option: False})
    export_onnx(model, make_inputs(cfg, 16, seed=0), fused)  # the default fuses (and validates the file)
    proto = onnx.load(str(plain))
    assert fuse_pass(proto) == nodes  # the pass on its own gives the same graph
    default = onnx.load(str(fused))
    assert _ops(proto) == _ops(default)
    return cfg, model, plain, fused, default


def check_fused_matches_unfused_and_pytorch(files, device, batch, seed, rtol=1e-5, atol=1e-6):
    """The fused file gives the plain file's outputs (within rtol/atol) and PyTorch's."""
    cfg, model, plain, fused, _ = files
    a, b = dd_ort.ort_session(plain, device=device), dd_ort.ort_session(fused, device=device)
    inputs = make_inputs(cfg, batch, seed=seed)
    feeds = onnx_feeds(a.input_names, *inputs)
    with torch.no_grad():
        ref = model(*inputs).numpy()
    got = b.run(feeds)[0]
    np.testing.assert_allclose(got, a.run(feeds)[0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def check_fused_in_a_cuda_graph(files):
    """The fused file, replayed in a CUDA graph on fresh inputs, matches PyTorch."""
    cfg, model, _plain, fused, _ = files
    sess = dd_ort.ort_session(fused, device="cuda", cuda_graph=True)
    for seed in (4, 5, 6):
        inputs = make_inputs(cfg, 32, seed=seed, pooling=8)
        with torch.no_grad():
            ref = model(*inputs).numpy()
        np.testing.assert_allclose(sess.run(onnx_feeds(sess.input_names, *inputs))[0], ref, rtol=1e-4, atol=1e-5)


def cli_export_ops(tmp_path, *extra):
    """The op types of `dlrm-deploy export --config small` with the extra arguments."""
    from dlrm_deploy.cli import main

    out = tmp_path / f"m{len(extra)}.onnx"
    assert main(["export", "--config", "small", "--out", str(out), *extra]) == 0
    return _ops(onnx.load(str(out)))
