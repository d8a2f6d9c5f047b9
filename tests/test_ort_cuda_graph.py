"""ONNX Runtime's CUDA provider with the exported DLRM: no Memcpy node, the op on CUDA, and
CUDA-graph sessions (ort_session(cuda_graph=True)) that replay with fresh inputs and still raise on
bad input (check=checked). Needs onnxruntime-gpu and a GPU; skipped otherwise, with the reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dlrm_deploy.runtime import ort as dd_ort

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not dd_ort.cuda_available(), reason="onnxruntime has no CUDA execution provider")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dlrm_deploy.export.dlrm import DLRM, get_config, make_inputs
    from dlrm_deploy.export.onnx_export import export_onnx

    cfg = get_config("small")
    model = DLRM(cfg, seed=0).eval()
    path = tmp_path_factory.mktemp("graph") / "small.onnx"
    export_onnx(model, make_inputs(cfg, 16, seed=0), path)
    return cfg, model, path


def _feeds(cfg, model, batch, seed):
    from dlrm_deploy.export.dlrm import make_inputs

    dense, indices, offsets = make_inputs(cfg, batch, seed=seed, pooling=8)  # fixed shapes per batch
    feeds = {"dense": dense.numpy()}
    feeds.update({f"indices_{t}": i.numpy() for t, i in enumerate(indices)})
    feeds.update({f"offsets_{t}": o.numpy() for t, o in enumerate(offsets)})
    with torch.no_grad():
        ref = model(dense, indices, offsets).numpy()
    return feeds, ref


def test_no_memcpy_node_and_op_on_cuda(exported):
    """ORT places every node on CUDA without copies (a Memcpy node would also rule out CUDA graphs)."""
    _cfg, _model, path = exported
    code = textwrap.dedent(f"""
        from dlrm_deploy.runtime import ort_session
        ort_session({str(path)!r}, device="cuda", log_severity_level=1)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Memcpy nodes are added" not in r.stderr, [ln for ln in r.stderr.splitlines() if "Memcpy" in ln]


@pytest.mark.parametrize("mode", [True, "ort"])
def test_cuda_graph_replays_fresh_inputs_and_buckets(exported, mode):
    """True: our capture of an ORT run, launched by us; "ort": ONNX Runtime's own graph mode."""
    cfg, model, path = exported
    sess = dd_ort.ort_session(path, device="cuda", cuda_graph=mode)
    for batch, seed in [(32, 1), (32, 2), (64, 3), (32, 4)]:
        feeds, ref = _feeds(cfg, model, batch, seed)
        (out,) = sess.run(feeds)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert len(sess._graphs) == 2


@pytest.mark.parametrize("mode", [True, "ort"])
def test_cuda_graph_checked_bad_input_raises_and_recovers(exported, mode):
    cfg, model, path = exported
    sess = dd_ort.ort_session(path, device="cuda", cuda_graph=mode)
    feeds, ref = _feeds(cfg, model, 32, 5)
    for _ in range(3):  # capture happens within these
        (out,) = sess.run(feeds)
    bad = dict(feeds)
    bad["indices_1"] = feeds["indices_1"].copy()
    bad["indices_1"][7] = cfg.table_rows[1] + 5
    with pytest.raises(RuntimeError, match=r"index \d+ at position 7 of indices 'indices_1'"):
        sess.run(bad)
    bad = dict(feeds)
    bad["offsets_2"] = feeds["offsets_2"].copy()
    bad["offsets_2"][0] = 1
    with pytest.raises(RuntimeError, match="first offset of offsets 'offsets_2'"):
        sess.run(bad)
    (out,) = sess.run(feeds)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cuda_graph", [False, True, "ort"])
def test_user_stream_runs_and_times_with_events(exported, cuda_graph):
    """A session on a stream of ours (high priority, as bench e2e's overlap rows) gives the same
    outputs, and time_runs(events=True) times it with CUDA events on that stream."""
    cfg, model, path = exported
    stream = torch.cuda.Stream(priority=-1)
    sess = dd_ort.ort_session(path, device="cuda", cuda_graph=cuda_graph, stream=stream.cuda_stream)
    feeds, ref = _feeds(cfg, model, 32, 7)
    np.testing.assert_allclose(sess.run(feeds)[0], ref, rtol=1e-4, atol=1e-5)
    t = sess.time_runs(feeds, runs=5, warmup=2, events=True)
    assert t["runs"] == 5 and 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    np.testing.assert_allclose(sess.run(feeds)[0], ref, rtol=1e-4, atol=1e-5)


def test_own_stream_session_times_with_events_and_closes(exported):
    """cuda_graph=True without stream=: the session makes a stream of its own (ORT's compute stream,
    where the graph is captured and launched), times on it, and releases it and its graphs on close."""
    cfg, model, path = exported
    sess = dd_ort.ort_session(path, device="cuda", cuda_graph=True)
    assert sess.stream is not None and sess._own_stream == sess.stream
    feeds, ref = _feeds(cfg, model, 32, 9)
    np.testing.assert_allclose(sess.run(feeds)[0], ref, rtol=1e-4, atol=1e-5)
    t = sess.time_runs(feeds, runs=5, warmup=2, events=True)
    assert t["runs"] == 5 and 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    (slot,) = sess._graphs.values()
    assert slot.exec is not None
    sess.close()
    assert sess.session is None and sess._own_stream is None and slot.exec is None
    sess.close()  # twice is harmless
