# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install lmforge, run the whole pipeline on the built-in demo data (CPU, offline)
#   make test   create .venv, install lmforge with its test tools, run the tests
#
# torch is installed first and on its own, so pip never resolves a multi-GB CUDA build by itself.
# CPU (default here): TORCH_SPEC=torch==2.13.0. Elsewhere on a CPU-only machine add
#   TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
# On a CUDA machine:  make demo TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The pipeline flow (Prefect, MLflow, DVC); `dvc repro` runs the same stages without Prefect.
# The venv's bin on PATH: DVC calls `lmforge stage ...` for stages it runs itself.
demo: setup
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/lmforge pipeline

# Every test, the slow end-to-end ones included (what CI runs). Three workers on two cores: many
# tests wait on a server or a child process (measured: 7.7 min against 9.0 with two). Work stealing:
# an idle worker takes tests queued on a busy one (measured: 10.2 min against 11.2 without).
test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 3 --dist worksteal -m "slow or not slow" --durations=25

# The fast tests only, for the edit-test loop.
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 3 --dist worksteal
