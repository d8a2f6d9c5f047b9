import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def pytest_configure(config):
    """`make test-wheel` runs this suite against the installed wheel: make sure that is what imports."""
    if os.environ.get("DLRM_DEPLOY_TEST_INSTALLED") != "1":
        return
    import dlrm_deploy
    from dlrm_deploy.libraries import library_dir

    pkg = pathlib.Path(dlrm_deploy.__file__).resolve()
    if pkg.parent == ROOT / "dlrm_deploy" or library_dir().resolve() == (ROOT / "build" / "lib").resolve():
        pytest.exit(f"DLRM_DEPLOY_TEST_INSTALLED=1 but dlrm_deploy comes from the checkout ({pkg}, libraries in "
                    f"{library_dir()})", returncode=3)


def _gpu_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    try:
        from dlrm_deploy.runtime import _core

        if not _core.cuda_available():
            return "the core library was built without CUDA"
    except Exception as e:  # library missing
        return f"core library unavailable: {e}"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
