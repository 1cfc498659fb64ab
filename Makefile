# shadowft developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup lint typecheck test test-fast test-rebuild demo serve bench clean

# The test order is shuffled on every run (pytest-randomly); the seed is on the command line make
# echoes, so a failing order repeats with `make test SEED=<it>`.
SEED ?= $(shell $(PYTHON) -c "import random; print(random.randrange(1 << 31))")

setup: $(STAMP)

# torch first (the CPU wheel lies on local disk); a later requirement that admits a newer torch
# would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

# Lint first (seconds): a style or import error fails before the long test run starts.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check shadowft tasks flows

typecheck: setup
	$(PY) -m mypy

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --randomly-seed=$(SEED) tests --durations=25

test-fast: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q --randomly-seed=$(SEED) -m "not slow" tests --durations=15

# Opt-in: trains the embedded family from scratch and checks it meets the shipped one's skill requirements.
test-rebuild: setup
	$(PY) -m pytest -q -m rebuild tests --durations=5

demo: setup
	$(VENV)/bin/shadowft demo

# Prefect UI with the Shadow-FT deployments and a worker: http://127.0.0.1:$(PORT) (Ctrl-C stops).
PORT ?= 4200
serve: setup
	$(VENV)/bin/shadowft serve --port $(PORT)

bench: setup
	$(PY) benchmarks/graft.py

clean:
	rm -rf $(VENV) .shadowft build *.egg-info
