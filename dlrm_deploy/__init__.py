"""dlrm-deploy: fast DLRM embedding-bag inference in ONNX Runtime, TensorRT and Triton.

Subpackages: ``dlrm_deploy.export`` (DLRM model, ONNX export with the custom op) and
``dlrm_deploy.runtime`` (ORT sessions, TensorRT engines, the torch op, benchmarks, Triton).
The op contract lives in ``dlrm_deploy.contract``.
"""

__version__ = "0.1.0"
