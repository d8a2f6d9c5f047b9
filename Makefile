# Two commands take a fresh clone to a working demo and a passing test suite:
#   make demo    set up .venv + build, then run the demo
#   make test    set up .venv + build, then run the test suite
# Everything is installed into .venv and build/ and reused when already there.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# PyTorch: the CPU build for development machines and CI. pip's default index gives Linux users the
# CUDA build of torch (several GB); TORCH_INDEX picks another index, e.g. PyTorch's own CPU wheel index
# (the URL that the "CPU" choice of pytorch.org's install selector prints):
#   make TORCH_INDEX=<that URL> test        or, for a CUDA build:  make TORCH_SPEC=torch test
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# TorchRec for the export tests of TorchRec models (CPU): fbgemm-gpu-cpu matched to TORCH_SPEC, then
# torchrec without its declared dependency (the CUDA fbgemm-gpu) and its small dependencies.
# `make TORCHREC_SPEC= ...` skips them (those tests then skip).
FBGEMM_SPEC ?= fbgemm-gpu-cpu==1.8.0
TORCHREC_SPEC ?= torchrec==1.9.2
TORCHREC_DEPS ?= tensordict torchmetrics tqdm pyre-extensions
JOBS ?= 2
CMAKE_ARGS ?=
# The wheel check (`make test-wheel`): its own virtualenv, wheels in dist/.
WHEEL_VENV := .venv-wheel

.PHONY: all venv build demo test clean headers wheel test-wheel

all: build

# install_deps PYTHON PACKAGE: torch first (the build chosen above), then PACKAGE (the checkout, editable,
# or a wheel) with its test extras, then TorchRec, then the real Triton server for the serving tests
# (nvidia-pytriton without its dependencies, which pin numpy<2) and the python-backend stub's numpy<2
# folder (<environment>/triton-stub-env, where `dlrm-deploy triton-serve` looks).
define install_deps
	$(1) -m pip install -q --upgrade pip
	$(1) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(1) -m pip install -q $(2)
	if [ -n "$(TORCHREC_SPEC)" ]; then \
	  $(1) -m pip install -q "$(FBGEMM_SPEC)" && \
	  $(1) -m pip install -q --no-deps "$(TORCHREC_SPEC)" && \
	  $(1) -m pip install -q $(TORCHREC_DEPS); fi
	$(1) -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
	$(1) -m pip install -q --upgrade --target "$$($(1) -c 'import sys; print(sys.prefix)')/triton-stub-env" "numpy<2"
endef

# The checkout, installed editable without running CMake: Python comes from the source folders (the
# package map in pyproject.toml), the libraries from build/lib (`make build`).
$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(call install_deps,$(PY),-e '.[test]' -Cwheel.cmake=false)
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

# The wheel as a user gets it (`pip wheel .`: CMake through scikit-build-core), installed into a fresh
# virtualenv and tested from outside the checkout, so that a file missing from the wheel fails.
wheel: venv
	rm -rf dist
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip wheel . --no-deps -w dist -Cbuild-dir=build/wheel
	@ls -l dist

test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(call install_deps,$(WHEEL_VENV)/bin/python,"$$(ls dist/*.whl)[test]")
	$(WHEEL_VENV)/bin/dlrm-deploy info
	cd "$$(mktemp -d)" && DLRM_DEPLOY_TEST_INSTALLED=1 $(abspath $(WHEEL_VENV))/bin/python -m pytest -q -rs \
	  -p no:cacheprovider --rootdir "$(CURDIR)" "$(CURDIR)/tests"

clean:
	rm -rf build dist $(WHEEL_VENV)
