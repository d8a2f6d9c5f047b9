"""Kernel timeline of one batch of a DLRM on the GPU: ONNX Runtime + our op (CUDA graph) against
PyTorch + FBGEMM's TBE (CUDA graph), both checked against eager PyTorch first. For each, the
kernels of a replay in order with their durations, the GPU-busy time (union of kernel intervals),
the span from the first kernel's start to the last one's end, and the idle time in between
(medians over --replays replays, recorded with torch.profiler, i.e. CUPTI).

    python scripts/profile_e2e.py --config paper --dtype fp32 --batch 2048 --out prof.json [--overlap]

Where the end-to-end time goes besides the lookups is what this answers: kernels of the dense
layers and the interaction, and the gaps between kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def _kernels(prof_trace: str) -> list[tuple[float, float, str]]:
    with open(prof_trace) as f:
        events = json.load(f)["traceEvents"]
    # kernels, and memset/memcpy nodes (a graph's copies and clears take GPU time too)
    ks = [(e["ts"], e["dur"], e["name"]) for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")]
    return sorted(ks)


def _replays(kernels, gap_us: float) -> list[list[tuple[float, float, str]]]:
    """Kernels grouped into replays: a new group after more than gap_us of GPU idle time."""
    groups, last_end = [], None
    for k in kernels:
        if last_end is None or k[0] - last_end > gap_us:
            groups.append([])
        groups[-1].append(k)
        last_end = max(last_end or 0.0, k[0] + k[1])
    return groups


def _busy(group) -> float:
    busy, end = 0.0, None
    for ts, dur, _ in group:
        if end is None or ts >= end:
            busy += dur
            end = ts + dur
        elif ts + dur > end:
            busy += ts + dur - end
            end = ts + dur
    return busy


def profile(fn, replays: int, gap_us: float = 300.0) -> dict:
    """fn() launches one batch; replays with a pause between, so each shows as one group."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            fn()
            torch.cuda.synchronize()
            time.sleep(0.002)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        groups = _replays(_kernels(path), gap_us)
    if not groups:
        return {"error": "no kernels recorded"}
    spans = [g[-1][0] + g[-1][1] - g[0][0] for g in groups]
    busies = [_busy(g) for g in groups]
    n = statistics.median_low([len(g) for g in groups])
    same = [g for g in groups if len(g) == n]
    table = []
    for i in range(n):  # the i-th kernel of every replay with the usual kernel count
        durs = [g[i][1] for g in same]
        gaps = [g[i][0] - (g[i - 1][0] + g[i - 1][1]) if i else 0.0 for g in same]
        table.append({"kernel": same[0][i][2][:90], "median_us": statistics.median(durs),
                      "gap_before_us": statistics.median(gaps)})
    return {"replays": len(groups), "kernels_per_replay": n, "span_us": statistics.median(spans),
            "busy_us": statistics.median(busies), "idle_us": statistics.median(s - b for s, b in zip(spans, busies)),
            "kernels": table}


def print_profile(title: str, p: dict) -> None:
    print(f"\n== {title}: {p.get('kernels_per_replay')} kernels, span {p.get('span_us', 0):.1f} us, "
          f"busy {p.get('busy_us', 0):.1f} us, idle {p.get('idle_us', 0):.1f} us (medians of {p.get('replays')})")
    for k in p.get("kernels", []):
        print(f"  {k['median_us']:9.1f} us  (gap {k['gap_before_us']:6.1f})  {k['kernel']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=None)
    ap.add_argument("--overlap", action="store_true", help="also profile the overlap export (high-priority ORT stream)")
    ap.add_argument("--ids", choices=("int32", "int64"), default="int32", help="dtype of the ids and offsets")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="JSON with every profile")
    a = ap.parse_args()

    import numpy as np
    import torch

    from dlrm_deploy.export import DLRM, export_onnx, get_config, make_inputs
    from dlrm_deploy.runtime import ort as ort_rt
    from dlrm_deploy.runtime.accuracy import TOLERANCE, compare, onnx_feeds
    from dlrm_deploy.runtime.bench_files import with_variant
    from dlrm_deploy.runtime.bench_torch import capture_graph
    from dlrm_deploy.runtime.fbgemm_tbe import TBEModel, tbe_inputs

    cfg = get_config(a.config)
    model = DLRM(cfg, seed=0).eval()
    inputs = make_inputs(cfg, a.batch, pooling=a.pooling or cfg.pooling, seed=1, index_dtype=getattr(torch, a.ids))
    dev = torch.device("cuda")
    workdir = a.workdir or tempfile.mkdtemp(prefix="profile_e2e_")
    out: dict = {"config": a.config, "dtype": a.dtype, "batch": a.batch, "device": torch.cuda.get_device_name()}
    gpu_model = model.to(dev)
    d, i, o = inputs
    dev_in = (d.to(dev), [t.to(dev) for t in i], [t.to(dev) for t in o])
    with torch.no_grad():
        ref = gpu_model(*dev_in).float().cpu().numpy()

    # PyTorch + FBGEMM TBE in a CUDA graph
    try:
        tbe = TBEModel(gpu_model, a.dtype, dev)
        graph, _static, gout = capture_graph(tbe, (dev_in[0], *tbe_inputs(dev_in[1], dev_in[2], dev)))
        graph.replay()
        err, _ = compare(gout.float().cpu().numpy(), ref)
        if err > TOLERANCE[a.dtype]:
            raise RuntimeError(f"FBGEMM graph output differs from PyTorch (max err {err:.2e})")
        out["pytorch_fbgemm_graph"] = profile(graph.replay, a.replays)
        print_profile("PyTorch + FBGEMM TBE, CUDA graph", out["pytorch_fbgemm_graph"])
        del graph, tbe
    except Exception as e:  # noqa: BLE001 - recorded
        out["pytorch_fbgemm_graph"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print("FBGEMM row skipped:", out["pytorch_fbgemm_graph"]["error"])
    gpu_model.cpu()
    torch.cuda.empty_cache()

    # (key, overlap, fuse the interaction, fuse the Linear chains, stream priority)
    kinds = [("ort_graph_standard_ops", False, False, False, 0), ("ort_graph_interaction_fused", False, True, False, 0),
             ("ort_graph", False, True, True, 0)]
    if a.overlap:
        kinds.append(("ort_overlap_graph_high_priority", True, True, True, -1))
    plain = os.path.join(workdir, "plain.onnx")
    for key, overlap, fuse, fuse_mlp, priority in kinds:
        path = os.path.join(workdir, f"{key}.onnx")
        if not os.path.exists(plain):
            export_onnx(model, inputs, plain, dtype=a.dtype)
        with_variant(plain, path, "auto", overlap=overlap, fuse=fuse, fuse_mlp=fuse_mlp)
        stream = torch.cuda.Stream(priority=priority)
        sess = ort_rt.ort_session(path, device="cuda", cuda_graph=True, stream=stream.cuda_stream)
        feeds = onnx_feeds(sess.input_names, *inputs)
        err, _ = compare(np.asarray(sess.run(feeds)[0]), ref)
        if err > TOLERANCE[a.dtype]:
            out[key] = {"error": f"output differs from PyTorch (max err {err:.2e})"}
            continue
        slot = sess._graph_slot(feeds)
        with torch.cuda.stream(torch.cuda.ExternalStream(stream.cuda_stream)):
            out[key] = profile(lambda: sess._replay(slot, synchronize=False, check=False), a.replays)
        out[key]["events"] = sess.time_runs(feeds, runs=50, warmup=10, events=True)
        out[key]["wall"] = sess.time_runs(feeds, runs=50, warmup=10)
        print_profile(f"ORT + our op, CUDA graph ({key})", out[key])
        print(f"  timed: events {out[key]['events']['median_ms']:.3f} ms, wall {out[key]['wall']['median_ms']:.3f} ms")
        del sess
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
