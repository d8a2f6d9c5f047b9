"""The op's CPU forward on int8 tables in the row form and stored split (split_scales=1): same ids,
outputs compared bit for bit, then timed interleaved (median of --runs).

    python scripts/probe_split_cpu.py [--tables 4 --rows 500000 --dim 128 --batch 1024 --pooling 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dlrm_deploy.layout import quantize_int8_rowwise, split_scales
from dlrm_deploy.runtime.torch_op import op_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--pooling", type=int, default=100)
    p.add_argument("--runs", type=int, default=7)
    a = p.parse_args()
    T, R, D, B, L = a.tables, a.rows, a.dim, a.batch, a.pooling
    rng = np.random.default_rng(0)
    rows = np.concatenate([quantize_int8_rowwise(rng.standard_normal((R, D)).astype(np.float32)) for _ in range(T)])
    forms = {"rows": (torch.from_numpy(rows), {}),
             "split": (torch.from_numpy(split_scales(rows, D)), {"split_scales": 1})}
    ids = torch.from_numpy(rng.integers(0, R, size=T * B * L).astype(np.int64))
    off = torch.arange(0, T * B * L + 1, L, dtype=torch.int64)
    kw = dict(table_rows=[R] * T, dim=D, dtype="int8", include_last_offset=1)
    outs = [op_call(w, ids, off, **kw, **extra) for w, extra in forms.values()]
    assert torch.equal(outs[0], outs[1]), "the two forms disagree"
    times = {name: [] for name in forms}
    for _ in range(a.runs):
        for name, (w, extra) in forms.items():
            t0 = time.perf_counter()
            op_call(w, ids, off, **kw, **extra)
            times[name].append(time.perf_counter() - t0)
    print(f"{T} tables x {R} rows, dim {D}, batch {B}, {L} ids a bag, {torch.get_num_threads()} threads: "
          + ", ".join(f"{n} {np.median(t) * 1000:.1f} ms" for n, t in times.items()) + f" (median of {a.runs})")


if __name__ == "__main__":
    main()
