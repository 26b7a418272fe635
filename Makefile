# One entry point for setting up, building, testing, benchmarking and linting.
# Every target creates the virtual environment and builds the extension first.
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export MAX_JOBS ?= 2
# The GPU machine's Triton (beside its torch 2.11): the tests compile every kernel with it
# too, into $(VENV)/gpu-triton, never imported by the package.
GPU_TRITON_VERSION ?= 3.6.0

CXX_SOURCES := $(wildcard csrc/*/*.h csrc/*/*.cuh csrc/*/*.cpp csrc/*/*.cu)
EXT_SOURCES := setup.py $(CXX_SOURCES)

.PHONY: setup build datasets demo train report test gpu-platform bench lint format clean

# The pinned platform first: the extension compiles against it.
$(VENV)/.installed: requirements.txt
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-deps --target $(VENV)/gpu-triton triton==$(GPU_TRITON_VERSION)
	touch $@

# Then the package with every extra (pyproject.toml), which builds the extension: once on
# a fresh clone, and again (only what changed) when a C++/CUDA source or the extras change.
# DIM_FUSED_CUDA=1 requires the CUDA kernels.
$(VENV)/.built: $(VENV)/.installed pyproject.toml $(EXT_SOURCES)
	$(PYTHON) -m pip install --no-build-isolation -e ".[dev]"
	touch $@

# Real images for the demo: Debian's Fashion-MNIST (30 MB, the four idx files), installed
# where this machine can (root and apt-get, as the project's machines and CI); without it
# everything works and the demo trains on the built-in digits.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
datasets:
	@if [ -d $(FASHION_MNIST) ]; then echo "fashion-mnist: $(FASHION_MNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist (30 MB) for the demo"; \
	  { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null 2>&1 \
	    && echo "fashion-mnist: $(FASHION_MNIST)" || echo "could not install dataset-fashion-mnist: the demo trains on digits"; \
	else echo "fashion-mnist is not installed (as root: apt-get install dataset-fashion-mnist): the demo trains on digits"; fi

setup build: $(VENV)/.built datasets

# The main job on built-in defaults: train DIM on Fashion-MNIST (on the bundled digits when
# it is not installed, saying why), probe it against a random encoder and the raw pixels,
# then the correctness-checked comparison of the backends.
demo: train report

# Training and probes, about 15-17 minutes on 2 CPU cores (about 3.5 on digits); SEED=1 another
# seed. Run again, it resumes (or only re-evaluates).
SEED ?= 0
FASHION_MNIST_RUN := --data fashion-mnist --units 512 --lr 1e-3 --views 2 --augment strong --steps 2000 --time-budget 10m
DIGITS_RUN := --data digits --units 512 --lr 1e-3 --steps 800
train: build
	@if [ -e $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] || ls data/FashionMNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "training DIM on fashion-mnist: runs/fashion-mnist-strong-seed$(SEED)"; \
	  $(PYTHON) -m dim_fused.training.train $(FASHION_MNIST_RUN) --seed $(SEED) --out runs/fashion-mnist-strong-seed$(SEED) --resume; \
	else \
	  echo "fashion-mnist is not installed (as root: apt-get install dataset-fashion-mnist; or its idx files in data/FashionMNIST/raw/): training DIM on the built-in digits"; \
	  $(PYTHON) -m dim_fused.training.train $(DIGITS_RUN) --seed $(SEED) --out runs/digits-seed$(SEED) --resume; \
	fi

report: build
	$(PYTHON) -m benchmarks.report --quick

# The test suite; without a GPU the Triton kernels run under the interpreter.
test: build
	$(PYTHON) -m pytest tests -q

# The GPU machine's platform, on this CPU: its Python (3.12: pyenv's where python3.12 is not on
# PATH; this machine's python3, said so, where neither is), torch $(GPU_TORCH_VERSION) and Triton
# $(GPU_TRITON_VERSION), in their own venv, the extension built as benchmarks/gpu_check.sh builds
# it there (sm_90, CUDA required), and the tests where versions differ (torch.library,
# torch.compile, the profiler's launch counts, the GPU check's dry run, the kernels' resources).
# A copy of the tree in $(GPU_PLATFORM)/src, so this build never replaces the main one (pip's
# editable build compiles in a temporary folder: all of it, each time). numpy < 2.4: Triton
# 3.6's interpreter takes int() of one-element arrays, which numpy 2.4 refuses.
GPU_TORCH_VERSION ?= 2.11.0
GPU_TORCHVISION_VERSION ?= 0.26.0
GPU_PYTHON_VERSION ?= 3.12
GPU_PYTHON ?= $(shell for p in python$(GPU_PYTHON_VERSION) \
	  $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(GPU_PYTHON_VERSION).*/bin/python3 2>/dev/null); do \
	  "$$p" -V >/dev/null 2>&1 && { echo "$$p"; exit; }; done; echo $(PYTHON_SYSTEM))
GPU_PLATFORM := build/gpu-platform
GPU_PLATFORM_TESTS := tests/ops tests/benchmarks/test_launches.py tests/benchmarks/test_gpu_check.py \
	tests/training/test_models.py -k "opcheck or compile or build or launch or gpu_check or graph or autocast"
gpu-platform:
	mkdir -p $(GPU_PLATFORM)/src
	@echo "gpu-platform: $$($(GPU_PYTHON) -V 2>&1) (the GPU machine's: Python $(GPU_PYTHON_VERSION))"
	test "$$($(GPU_PLATFORM)/venv/bin/python -V 2>&1)" = "$$($(GPU_PYTHON) -V 2>&1)" || \
	  { rm -rf $(GPU_PLATFORM)/venv && $(GPU_PYTHON) -m venv $(GPU_PLATFORM)/venv; }
	printf 'torch==%s\ntorchvision==%s\ntriton==%s\nnumpy<2.4\n' $(GPU_TORCH_VERSION) $(GPU_TORCHVISION_VERSION) \
	  $(GPU_TRITON_VERSION) >$(GPU_PLATFORM)/constraints.txt
	find $(GPU_PLATFORM)/src -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -C $(GPU_PLATFORM)/src -xf -
	cd $(GPU_PLATFORM)/src && ../venv/bin/python -m pip install -q -c ../constraints.txt setuptools wheel ninja torch
	cd $(GPU_PLATFORM)/src && DIM_FUSED_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
	  ../venv/bin/python -m pip install -q --no-build-isolation -c ../constraints.txt -e ".[test]"
	cd $(GPU_PLATFORM)/src && ../venv/bin/python -m pytest -q -p no:cacheprovider \
	  -W "ignore:Conversion of an array with ndim:DeprecationWarning" $(GPU_PLATFORM_TESTS)

bench: build
	$(PYTHON) -m pytest benchmarks -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build dim_fused/_C*.so $(VENV)/.built
