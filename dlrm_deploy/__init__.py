"""dlrm-deploy: fast DLRM embedding-bag inference in ONNX Runtime, TensorRT and Triton.

Subpackages: ``dlrm_deploy.export`` (DLRM model, ONNX export with the custom op) and
``dlrm_deploy.runtime`` (ORT sessions, TensorRT engines, the torch op, benchmarks, Triton).
The op contract lives in ``dlrm_deploy.contract``; ``library_path("ort" | "trt" | "core")`` finds the
native libraries (``dlrm_deploy.libraries``).
"""

import pathlib as _pathlib

# In a source checkout the subpackages live in the top-level folders export/ and runtime/ (pyproject.toml
# maps them into the wheel); imported straight from a checkout, the package looks for them there too.
_checkout = _pathlib.Path(__file__).resolve().parent.parent
if (_checkout / "export" / "__init__.py").is_file() and (_checkout / "CMakeLists.txt").is_file() \
        and str(_checkout) not in __path__:
    __path__.append(str(_checkout))

from .libraries import library_path  # noqa: E402,F401

__version__ = "0.1.0"  # the one place the version is written (pyproject and CMake read it from here)
__all__ = ["library_path", "__version__"]
