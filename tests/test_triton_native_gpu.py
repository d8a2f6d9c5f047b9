"""Our native Triton backend (``backend: "dlrm_deploy"``) on a GPU: a KIND_GPU repository of a small
exported DLRM (fp32 and int8 tables) served by the real tritonserver; concurrent clients of
different-sized requests get exactly their rows (compared with local ONNX Runtime on the CUDA
provider), an id outside its table is that request's one-line error, and Triton merges requests.
Needs a GPU, onnxruntime-gpu and the server (`make venv`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dlrm_deploy.runtime import triton_python as P
from dlrm_deploy.runtime.model_io import describe_onnx, sample_inputs
from dlrm_deploy.runtime.triton_client import make_infer_inputs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["fp32", "int8"])
def served(request, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    from dlrm_deploy import export
    from dlrm_deploy.runtime.ort import ort_session
    from dlrm_deploy.runtime.triton import triton_repo
    from dlrm_deploy.runtime.triton_server import TritonServer

    d = tmp_path_factory.mktemp(f"native_{request.param}")
    onnx_path = d / "dlrm.onnx"
    export.export_onnx(export.DLRM("small"), export.make_inputs("small", batch=4), onnx_path, dtype=request.param)
    triton_repo(onnx_path, d / "repo", backend="native", name="dlrm", kind="gpu", instances=2, max_batch_size=32,
                max_queue_delay_us=20000, validate=True)
    server = TritonServer(d / "repo", timeout_s=180, log_path=d / "server.log")
    try:
        server.start()
        yield server, describe_onnx(onnx_path), ort_session(str(onnx_path), device="cuda")
    finally:
        server.close()
    assert "dlrm instance on GPU 0" in (d / "server.log").read_text()  # ran on the CUDA provider


def test_concurrent_requests_match_local_cuda_onnxruntime_and_bad_ids_fail_alone(served):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    server, io, sess = served
    spec = P.io_spec(io, "packed")
    rng = np.random.default_rng(3)
    jobs = []
    for k in range(40):
        feeds = sample_inputs(io, batch=int(rng.integers(1, 64)), pooling=int(rng.integers(1, 30)), seed=500 + k)
        bad = k % 10 == 7
        if bad:
            feeds["indices_2"][0] = 10**6  # table 2 has 3000 rows
        want = None if bad else dict(zip(sess.output_names, sess.run(feeds)))["sigmoid"]
        jobs.append((P.request_from_feeds(feeds, spec), want))
    got = {}

    def client(t):
        mod, url = (tg, server.grpc_url) if t % 2 else (th, server.http_url)
        c = mod.InferenceServerClient(url)
        for k in range(t, len(jobs), 8):
            try:
                got[k] = c.infer("dlrm", make_infer_inputs(jobs[k][0], "grpc" if t % 2 else "http")).as_numpy("sigmoid")
            except Exception as e:  # noqa: BLE001 - checked below
                got[k] = e

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k, (req, want) in enumerate(jobs):
        if want is None:
            assert isinstance(got[k], Exception) and "out of range" in str(got[k]) and "\n" not in str(got[k]), got[k]
        else:
            assert not isinstance(got[k], Exception), got[k]
            np.testing.assert_allclose(got[k][0], want, rtol=1e-5, atol=1e-6, err_msg=f"request {k}")
    s = tg.InferenceServerClient(server.grpc_url).get_inference_statistics("dlrm", as_json=True)["model_stats"][0]
    assert int(s.get("execution_count", 0)) < len(jobs), s  # requests were merged
