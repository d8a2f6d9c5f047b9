"""`dlrm-deploy info`: what is installed and what it can use, the text to paste into a bug report.

Reports the package version, where each native library is (or why it was not built), the CUDA
architectures compiled, whether a GPU is visible to the core library, ONNX Runtime's version and
providers, torch and TensorRT. Nothing here needs a GPU; every probe that fails says why.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import platform
import sys

from . import __version__
from .libraries import LIBRARIES, build_info, library_dir


def _libraries() -> dict:
    try:
        folder = library_dir()
    except FileNotFoundError as e:
        return {"folder": None, "error": str(e)}
    info = build_info(folder)
    out = {"folder": str(folder)}
    for kind, name in LIBRARIES.items():
        path = folder / name
        entry = {"path": str(path)} if path.exists() else {"path": None}
        if not path.exists():
            entry["reason"] = info.get(kind, {}).get("reason", "not built")
        out[kind] = entry
    out["build"] = info
    return out


def _core(libs: dict) -> dict:
    path = (libs.get("core") or {}).get("path")
    if not path:
        return {"loaded": False}
    try:
        lib = ctypes.CDLL(path)
        lib.dd_version.restype = ctypes.c_char_p
        return {"loaded": True, "version": lib.dd_version().decode(), "cuda_gpu_visible": bool(lib.dd_cuda_available())}
    except (OSError, AttributeError) as e:
        return {"loaded": False, "error": str(e)}


def _module(name: str, probe=None) -> dict:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any import failure is a fact to report, not a crash
        return {"installed": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    out = {"installed": True, "version": getattr(mod, "__version__", "?")}
    if probe:
        try:
            out.update(probe(mod))
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
    return out


def collect() -> dict:
    """Everything `dlrm-deploy info` reports, as a JSON-serialisable dict."""
    libs = _libraries()
    return {
        "dlrm_deploy": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": libs,
        "core": _core(libs),
        "onnxruntime": _module("onnxruntime", lambda m: {"providers": list(m.get_available_providers())}),
        "torch": _module("torch", lambda m: {"cuda": m.version.cuda, "gpu_visible": m.cuda.is_available()}),
        "tensorrt": _module("tensorrt"),
    }


def _lines(info: dict) -> list[str]:
    libs, build = info["libraries"], info["libraries"].get("build", {})
    lines = [f"dlrm-deploy {info['dlrm_deploy']}  (python {info['python']}, {info['platform']})"]
    if libs.get("folder") is None:
        return lines + [f"libraries: {libs['error']}"]
    lines.append(f"libraries: {libs['folder']}")
    for kind in LIBRARIES:
        e = libs[kind]
        lines.append(f"  {kind:6s} {e['path'] or 'not built: ' + e['reason']}")
    cuda = build.get("cuda", {})
    lines.append("CUDA kernels: " + (f"{cuda.get('architectures')} (nvcc {cuda.get('compiler')})" if cuda.get("built")
                                     else f"none ({cuda.get('reason', 'unknown build')})"))
    core = info["core"]
    if core.get("loaded"):
        lines.append(f"core library {core['version']}: GPU visible: {'yes' if core['cuda_gpu_visible'] else 'no'}")
    elif core.get("error"):
        lines.append(f"core library: cannot load: {core['error']}")
    for name in ("onnxruntime", "torch", "tensorrt"):
        m = info[name]
        if not m["installed"]:
            lines.append(f"{name}: not installed ({m['error']})")
            continue
        extra = {k: v for k, v in m.items() if k not in ("installed", "version")}
        lines.append(f"{name} {m['version']}: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `dlrm-deploy info`."""
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    """Prints the report; exit code 0 even when something is missing (the report says what)."""
    info = collect()
    print(json.dumps(info, indent=2) if args.json else "\n".join(_lines(info)))
    return 0
