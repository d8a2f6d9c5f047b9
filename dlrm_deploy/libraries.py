"""Where the native libraries are: the one way every caller finds them.

``library_path("ort")`` is what a user hands to ONNX Runtime::

    so = onnxruntime.SessionOptions()
    so.register_custom_ops_library(dlrm_deploy.library_path("ort"))

Search order for the folder holding ``libdlrm_deploy_*.so``:
1. ``$DLRM_DEPLOY_LIB_DIR`` (an override, e.g. a second build);
2. ``dlrm_deploy/lib/`` inside the installed package (``pip install`` puts them there);
3. ``build/lib/`` of the source checkout this package was imported from (``make build``).

The build writes ``build_info.json`` beside the libraries: what was compiled (CUDA architectures,
the TensorRT plugin or why it was skipped, the ONNX Runtime API of the headers).
"""

from __future__ import annotations

import json
import os
import pathlib

LIBRARIES = {
    "core": "libdlrm_deploy_core.so",  # the kernel core's C ABI (ctypes, the torch op)
    "ort": "libdlrm_deploy_ort.so",  # ONNX Runtime custom-op library (register_custom_ops_library)
    "trt": "libdlrm_deploy_trt.so",  # TensorRT plugin library (IPluginV3, load_library)
    "triton": "libtriton_dlrm_deploy.so",  # Triton backend "dlrm_deploy" (triton-repo --backend native)
}
BUILD_INFO = "build_info.json"

_PACKAGE = pathlib.Path(__file__).resolve().parent


def _candidates() -> list[pathlib.Path]:
    env = os.environ.get("DLRM_DEPLOY_LIB_DIR")
    found = [pathlib.Path(env)] if env else []
    found.append(_PACKAGE / "lib")
    checkout = _PACKAGE.parent
    if (checkout / "CMakeLists.txt").exists():  # imported from a source checkout, not an install
        found.append(checkout / "build" / "lib")
    return found


def library_dir() -> pathlib.Path:
    """Folder holding the native libraries (see the module docstring for the search order).

    Raises FileNotFoundError naming every folder tried when none holds the core library."""
    tried = _candidates()
    for c in tried:
        if (c / LIBRARIES["core"]).exists():
            return c
    raise FileNotFoundError(
        "libdlrm_deploy_core.so not found in " + ", ".join(str(c) for c in tried)
        + ": install the package with pip, or build a checkout with `make build` (or set DLRM_DEPLOY_LIB_DIR)")


def library_path(kind: str = "ort") -> str:
    """Absolute path of one native library: ``"ort"`` (ONNX Runtime custom ops), ``"trt"`` (TensorRT
    plugin), ``"triton"`` (the Triton backend) or ``"core"`` (the kernel core).

    Raises ValueError for another kind and FileNotFoundError, with the build's reason where it
    recorded one, when that library was not built."""
    if kind not in LIBRARIES:
        raise ValueError(f"unknown library {kind!r}: expected one of {', '.join(LIBRARIES)}")
    folder = library_dir()
    path = folder / LIBRARIES[kind]
    if not path.exists():
        reason = build_info(folder).get(kind, {}).get("reason") or "see the build output for why it was skipped"
        raise FileNotFoundError(f"{LIBRARIES[kind]} was not built ({reason}): looked in {folder}")
    return str(path)


def build_info(folder: pathlib.Path | None = None) -> dict:
    """What the build compiled, from ``build_info.json`` beside the libraries ({} when absent)."""
    try:
        folder = folder or library_dir()
        return json.loads((folder / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}
