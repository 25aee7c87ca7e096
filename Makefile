# The two commands of the README. Both set up .venv on first use (CPU torch first, then
# the project with its dev and bench extras) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. Where the CPU wheel is not on a local find-links, point pip at
# PyTorch's CPU index: make TORCH_INDEX=--extra-index-url=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Real datasets for the tests (CI has ../shared/data beside the checkout).
RECSYS_DATA ?= $(abspath ../shared/data)
export RECSYS_DATA
# OpenMP threads sleep instead of spinning when they wait: on a shared 2-core machine the
# spinning default made a (1024 x 64) @ (64 x 1024) matmul 10x slower (33 ms vs 3.5 ms).
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

setup: $(VENV)/.installed

## Main job: train a two-tower model on the embedded synthetic default, print recall/NDCG.
demo: setup
	$(VENV)/bin/recsys demo

## Tests (unit, real-data, CLI, notebooks). Exit code 5 (no tests collected) fails.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests --nbmake notebooks

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache lightning_logs
