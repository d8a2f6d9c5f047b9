# Two commands take a fresh clone to a working demo and a passing test suite:
#   make demo    set up .venv + build, then run the demo
#   make test    set up .venv + build, then run the test suite
# Everything is installed into .venv and build/ and reused when already there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch for development machines and CI; override for a CUDA build,
# e.g. `make TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
# TorchRec for the export tests of TorchRec models (CPU): fbgemm-gpu-cpu matched to TORCH_SPEC, then
# torchrec without its declared dependency (the CUDA fbgemm-gpu) and its small dependencies.
# `make TORCHREC_SPEC= ...` skips them (those tests then skip).
FBGEMM_SPEC ?= fbgemm-gpu-cpu==1.8.0
TORCHREC_SPEC ?= torchrec==1.9.2
TORCHREC_DEPS ?= tensordict torchmetrics tqdm pyre-extensions
JOBS ?= 2
CMAKE_ARGS ?=

.PHONY: all venv build demo test clean headers

all: build

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	if [ -n "$(TORCHREC_SPEC)" ]; then \
	  $(PY) -m pip install -q "$(FBGEMM_SPEC)" && \
	  $(PY) -m pip install -q --no-deps "$(TORCHREC_SPEC)" && \
	  $(PY) -m pip install -q $(TORCHREC_DEPS); fi
	$(PY) -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
	$(PY) -m pip install -q --upgrade --target $(VENV)/triton-stub-env "numpy<2"
	touch $@

venv: $(VENV)/.stamp

# Third-party headers for the adapters (never committed): ONNX Runtime's C API from Debian's
# libonnxruntime-dev unless ONNXRUNTIME_ROOT is set; TensorRT's from TENSORRT_ROOT or a TensorRT
# OSS checkout (TRT_OSS=...), else the TensorRT plugin is skipped with a printed reason.
headers:
	bash scripts/fetch_ort_headers.sh
	bash scripts/fetch_trt_headers.sh

build: venv headers
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY)) $(CMAKE_ARGS)
	cmake --build build -j $(JOBS)

test: build
	$(PY) -m pytest -q -rs

demo: build
	$(VENV)/bin/dlrm-deploy demo

clean:
	rm -rf build
