"""GPU memory that ONNX Runtime's CUDA provider takes by itself, next to an exported model's.

Each measurement runs in a fresh process: torch brings the CUDA context up first, then free device
memory (torch.cuda.mem_get_info) is read before ``ort_session()``, after it, and after one run, as
``dlrm-deploy bench e2e`` reports "GPU memory of a session". ``add`` and ``matmul`` are one-node
models (64 x 64): what the provider holds whatever the model; a MODEL path adds the exported model
(inputs from make_inputs of --config at --batch, --ids).

    python scripts/ort_cuda_overhead.py add matmul /tmp/e2e/dlrm_deploy.onnx --config paper --batch 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r'''
import json, sys
import numpy as np, torch
from onnx import TensorProto, helper
torch.zeros(1, device="cuda")
from dlrm_deploy.runtime import ort as ort_rt
kind, config, batch, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
free = lambda: torch.cuda.mem_get_info()[0]
f0 = free()
if kind in ("add", "matmul"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])
    node = helper.make_node("Add" if kind == "add" else "MatMul", ["x", "x"], ["y"])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_rt.ort_session(model.SerializeToString(), device="cuda")
    f1 = free()
    sess.run({"x": np.ones((64, 64), np.float32)})
else:
    from dlrm_deploy.export import get_config, make_inputs
    from dlrm_deploy.runtime.accuracy import onnx_feeds
    sess = ort_rt.ort_session(kind, device="cuda")
    f1 = free()
    inputs = make_inputs(get_config(config), batch, seed=1, index_dtype=getattr(torch, ids))
    sess.run(onnx_feeds(sess.input_names, *inputs))
f2 = free()
print(json.dumps({"model": kind, "after_creation_mib": (f0 - f1) / 2**20, "after_first_run_mib": (f0 - f2) / 2**20}))
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="add, matmul or an exported .onnx path")
    p.add_argument("--config", default="paper", help="config of an exported model's inputs (default paper)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--ids", choices=("int32", "int64"), default="int32", help="the exported model's id dtype")
    args = p.parse_args()
    rc = 0
    for model in args.models:
        r = subprocess.run([sys.executable, "-c", CHILD, model, args.config, str(args.batch), args.ids],
                           capture_output=True, text=True)
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines:
            print(f"{model}: failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
            rc = 1
            continue
        m = json.loads(lines[-1])
        print(f"{model}: {m['after_creation_mib']:.0f} MiB after creation, {m['after_first_run_mib']:.0f} MiB after "
              "the first run")
    return rc


if __name__ == "__main__":
    sys.exit(main())
