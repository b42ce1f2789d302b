# The product's front door: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

.PHONY: run test lint typecheck test-sqlite test-postgresql bench system-deps venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

system-deps:
	@orthanc/install-packages.sh

## Start Orthanc (with the plugin and DICOMweb) and the sidecar in the foreground; Ctrl-C stops all.
run: system-deps venv
	$(BIN)/python -m sidecar.launcher

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test-sqlite: system-deps venv
	$(BIN)/pytest --database sqlite

# PostgreSQL must be reachable at TEST_POSTGRES_URL (127.0.0.1:5432 on these machines).
test-postgresql: system-deps venv
	$(BIN)/pytest --database postgresql --postgres-url '$(TEST_POSTGRES_URL)'

## The whole suite: lint, types, then every test on SQLite and again on PostgreSQL.
test: lint typecheck test-sqlite test-postgresql

## Benchmarks (by hand; figures go in the closing notes). hl7_intake needs PostgreSQL.
bench: system-deps venv
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/worklist.py
	$(BIN)/python bench/hl7_intake.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
