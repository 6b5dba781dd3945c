# Every target sets itself up: .venv is built from pyproject.toml when missing or stale.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck unit bench soak clean

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(DEV_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

demo: $(RUNTIME_STAMP)
	$(BIN)/walkbook demo --journal demo-out/journal.db

lint: $(DEV_STAMP)
	$(BIN)/ruff check engine journal tests bench
	$(BIN)/ruff format --check engine journal tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

soak: $(DEV_STAMP)
	WALKBOOK_SOAK=long $(BIN)/pytest -q -m soak

# Modules, not files: run as `python bench/engine.py`, that script would shadow the engine package.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
