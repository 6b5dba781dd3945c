# Every target sets itself up: .venv is built from pyproject.toml when missing or stale.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck unit browser postgres bench soak clean

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

# The HTML report's test opens it in Debian's headless chromium: installed here when missing
# (as root: apt-get), otherwise a clear message; a no-op once it is on the PATH.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing: run 'sudo apt-get install --no-install-recommends chromium' (Debian)" >&2; \
	    exit 1; \
	  fi; }

# The PostgreSQL journal's tests start a throwaway cluster of their own (initdb, pg_ctl on
# 127.0.0.1, never a system service): Debian's postgresql is installed here when its
# binaries are missing from the PATH and from /usr/lib/postgresql/*/bin.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	  else \
	    echo "PostgreSQL is missing: run 'sudo apt-get install --no-install-recommends postgresql' (Debian)" >&2; \
	    exit 1; \
	  fi; }

unit: $(DEV_STAMP) browser postgres
	$(BIN)/pytest -q

test: lint typecheck unit

# The long forms of the tests marked soak (make test runs their short forms): among them
# 2,000 SIGKILLed runs on a SQLite journal and 400 on a PostgreSQL one, and the crash-point
# suite's whole sweep on PostgreSQL.
soak: $(DEV_STAMP) postgres
	WALKBOOK_SOAK=long $(BIN)/pytest -q -m soak

# Modules, not files: run as `python bench/engine.py`, that script would shadow the engine package.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache .hypothesis
