# medsft — the two set-up commands are `make demo` and `make test` (see README).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Caches outside the repo, so a fresh clone on a warm machine reuses them.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/medsft/torch_extensions
# mypy's incremental cache: a fresh clone re-checks only the files whose content differs
# (about 10 s) instead of all of pydantic, kubernetes and the rest again (70 s or more).
export MYPY_CACHE_DIR ?= $(HOME)/.cache/medsft/mypy
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Bytecode is written as each module is first imported (Python's default), not compiled for
# the whole venv when it is made: the suite imports about 6,000 of the venv's 22,000 modules,
# and compiling them all took 53 s of every fresh clone's `make test`. Without this, a
# PYTHONDONTWRITEBYTECODE set in the environment (this project's CI machine sets it) would
# have every process compile torch and transformers from source again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: all venv testbin lint test test-fast demo lock crds docs clean

all: test

# The environment: one venv, pinned by constraints.txt (regenerate with `make lock`).
# uv installs it: its cache (~/.cache/uv) keeps the wheels unpacked and links them into the
# venv, so a second clone's venv takes seconds instead of pip's 3 to 6 minutes of
# downloading and unzipping the same ~4 GB of torch and CUDA wheels (pip's HTTP cache stays
# empty here). No --compile-bytecode: see PYTHONDONTWRITEBYTECODE above.
$(STAMP): pyproject.toml constraints.txt
	@echo ">> creating $(VENV) (first time: downloads torch and friends, a minute or two)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q --upgrade pip
	$(BIN)/pip install --progress-bar off -q -c constraints.txt uv
	$(BIN)/uv pip install --python $(BIN)/python -c constraints.txt -e '.[train,dev,bench]'
	touch $@

venv: $(STAMP)

testbin:
	bash hack/install-node-deps.sh
	bash hack/build-testbin.sh
	bash hack/build-images.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The README's test command: environment + real binaries + images + lint + the whole suite,
# the one-time phases overlapped, ending with the time of each phase and the slowest tests.
test:
	bash hack/test.sh

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow" -x

# The README's first command: the embedded default, end to end, on one machine.
demo: $(STAMP)
	$(BIN)/medsft run --local examples/quickstart.yaml

crds: $(STAMP)
	$(BIN)/medsft crds --write crds/ --write charts/medsft/crds/
	$(BIN)/medsft rbac --write charts/medsft/files/rbac.yaml
	$(BIN)/python -m medsft_operator.api.docs > docs/api.md

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable --exclude medsft | LC_ALL=C sort -f > constraints.txt
	$(BIN)/python hack/lock-trainer-image.py
	$(BIN)/python hack/lock-eval-image.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
