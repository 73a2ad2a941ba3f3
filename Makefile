# Two commands on a fresh machine: `make demo` runs the product, `make test` runs the tests.
# Each installs what it needs first (a venv in .venv, pinned by constraints.txt).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The machine's pip config lists index folders that do not all exist; its warnings drown real output.
PIP_NOISE := 'is ignored: it is neither a file nor a directory'

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install system-deps demo test lint format clean

help:
	@echo "make demo    - run the whole pipeline on the embedded default (synthetic data, local MLflow)"
	@echo "make test    - run the test suite (what CI runs)"
	@echo "make install - create $(VENV) with the pinned stack (done automatically by demo/test)"
	@echo "make lint    - ruff check + format check"

# torch/torchvision first and exactly pinned: they come from local disk, and DeepSpeed's build needs
# torch importable. DS_BUILD_OPS=0: no CUDA toolchain here; ops are JIT-compiled on first use.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | { grep -v $(PIP_NOISE) || true; }
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | { grep -v $(PIP_NOISE) || true; }
	$(BIN)/python -c "import sgdm_dist, deepspeed, accelerate, diffusers, open_clip, webdataset, mne, ray, mlflow"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: Chromium renders the HTML report; kubectl renders kustomize offline.
# Installed only when missing (CI runs as root on a Debian machine).
system-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v kubectl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }

demo: install
	$(BIN)/sgdm demo configs/demo.yaml

# One pytest-xdist worker per core, a whole test file per worker (tests share per-file fixtures);
# tests/conftest.py pins each worker to its core. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= $(shell nproc)

# pytest exit 5 means "no tests collected": say so and fail, an empty run proves nothing.
test: install system-deps lint
	rc=0; $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf outputs .pytest_cache build *.egg-info
