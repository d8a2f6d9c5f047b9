"""Finds the native libraries (core, ONNX Runtime op, TensorRT plugin) built by CMake."""

from __future__ import annotations

import os
import pathlib

_REPO = pathlib.Path(__file__).resolve().parent.parent


def library_dir() -> pathlib.Path:
    """Folder holding libdlrm_deploy_*.so: $DLRM_DEPLOY_LIB_DIR, else the package's lib/, else
    the source tree's build/lib (where `make` puts them)."""
    env = os.environ.get("DLRM_DEPLOY_LIB_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates += [pathlib.Path(__file__).resolve().parent / "lib", _REPO / "build" / "lib"]
    for c in candidates:
        if (c / "libdlrm_deploy_core.so").exists():
            return c
    raise FileNotFoundError(
        "libdlrm_deploy_core.so not found in " + ", ".join(str(c) for c in candidates)
        + ": build it with `make build` (or set DLRM_DEPLOY_LIB_DIR)")


def _lib(name: str) -> pathlib.Path:
    path = library_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: was it built? (`make build`; see the CMake output for why a "
                                "target was skipped)")
    return path


def core_library_path() -> str:
    """Path of the kernel core's shared library."""
    return str(_lib("libdlrm_deploy_core.so"))
