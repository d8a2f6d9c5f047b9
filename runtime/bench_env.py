"""The benchmarks' record of where they ran: GPU, driver and package versions (for the JSON)."""

from __future__ import annotations

import platform
import subprocess


def driver_version(timeout_s: float = 20) -> str | None:
    """The NVIDIA driver version nvidia-smi reports, None where it cannot be run."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout_s).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def environment() -> dict:
    """GPU name, driver and package versions for the JSON."""
    import onnx
    import onnxruntime
    import torch

    import dlrm_deploy

    env = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "dlrm_deploy": dlrm_deploy.__version__,
           "ort_providers": onnxruntime.get_available_providers(), "host": platform.node()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["driver"] = driver_version(timeout_s=10)
    try:
        import fbgemm_gpu

        env["fbgemm_gpu"] = getattr(fbgemm_gpu, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        env["fbgemm_gpu"] = None
    return env
