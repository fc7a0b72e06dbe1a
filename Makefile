# Quick start: `make train` (the default APO game) and `make test`. Both create .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test test-slow test-all lint bench bench-trl clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: the CPU wheel on this machine's disk; a plain `torch` would pull a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(VENV)/bin/apo-train $(ARGS)

test: install
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow: that is not a failure
test-slow: install
	$(VENV)/bin/pytest -m "slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: install
	$(PY) benchmarks/round_phases.py $(ARGS)

# against TRL: its optional `bench` extra (never installed by `make install`)
bench-trl: install
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/vs_trl.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
