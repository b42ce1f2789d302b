# The product's front door: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

VIEWER_DIR := viewer
BROWSER_DIR := tests/browser
# npm ci runs again whenever a lockfile changes.
VIEWER_STAMP := $(VIEWER_DIR)/node_modules/.installed-$(shell sha1sum < $(VIEWER_DIR)/package-lock.json | cut -c1-12)
BROWSER_STAMP := $(BROWSER_DIR)/node_modules/.installed-$(shell sha1sum < $(BROWSER_DIR)/package-lock.json | cut -c1-12)
# --ignore-scripts: the prebuilt viewer needs no install step, and none may run on our machines.
NPM_CI := npm ci --ignore-scripts --no-audit --no-fund

.PHONY: run test lint typecheck test-sqlite test-postgresql bench system-deps test-deps viewer venv clean \
	backup restore verify-backup

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

system-deps:
	@orthanc/install-packages.sh

## The OHIF Viewer (npm @ohif/app, prebuilt, pinned in viewer/package-lock.json).
viewer: $(VIEWER_STAMP)

$(VIEWER_STAMP): $(VIEWER_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js and npm to get the viewer" >&2; exit 1; }
	cd $(VIEWER_DIR) && $(NPM_CI)
	touch $@

## Chromium and nginx (Debian), playwright-core and axe-core (npm): the viewer and page tests
## and the benchmark.
test-deps: $(BROWSER_STAMP)
	@orthanc/install-test-packages.sh

$(BROWSER_STAMP): $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && $(NPM_CI)
	touch $@

## Start Orthanc (with the plugin and DICOMweb) and the sidecar in the foreground; Ctrl-C stops all.
# Without npm (or its registry) everything but the viewer still runs: the sidecar says why.
run: system-deps venv
	-@$(MAKE) --no-print-directory viewer
	$(BIN)/python -m sidecar.launcher

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# Each run has a temporary root of its own: pytest prunes older numbered folders under the
# shared default one, which a run beside it may still be using. Each run ends with its slowest
# steps (setup, call and teardown apart), so the place to cut shows in CI's own output.
PYTEST_TIMES := --durations=40 --durations-min=8
test-sqlite: system-deps venv viewer test-deps
	$(BIN)/pytest $(PYTEST_TIMES) --database sqlite --basetemp="$$(mktemp -d -t pytest-sqlite-XXXXXX)"

# PostgreSQL must be reachable at TEST_POSTGRES_URL (127.0.0.1:5432 on these machines).
test-postgresql: system-deps venv viewer test-deps
	$(BIN)/pytest $(PYTEST_TIMES) --database postgresql --postgres-url '$(TEST_POSTGRES_URL)' \
		--basetemp="$$(mktemp -d -t pytest-postgresql-XXXXXX)"

## The whole suite: lint, types, every test on SQLite, and again on PostgreSQL each test that
## uses the sidecar's database (tests/conftest.py). The two runs go side by side: much of a run
## waits on Orthanc, nginx, sockets and child processes, so on two cores they take little more
## than the longer one alone. Each keeps its output until it ends (--output-sync), so a failure
## reads whole; SERIAL=1 runs them one after the other.
test: lint typecheck system-deps venv viewer test-deps
	@$(MAKE) --no-print-directory $(if $(SERIAL),,-j2 --output-sync=target) test-sqlite test-postgresql

## Benchmarks (by hand; figures go in the closing notes). hl7_intake, report_results,
## critical_findings and mpps need PostgreSQL; viewer needs the viewer and Chromium.
bench: system-deps venv viewer test-deps
	$(BIN)/python bench/viewer.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/worklist.py
	$(BIN)/python bench/hl7_intake.py
	$(BIN)/python bench/report_results.py
	$(BIN)/python bench/critical_findings.py
	$(BIN)/python bench/mpps.py
	$(BIN)/python bench/reading.py
	$(BIN)/python bench/patient_merge.py
	$(BIN)/python bench/pages.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/quality_detection.py

## Backups (README, Operations). Run with the service's own environment (DATA_DIR, DATABASE_URL,
## ORTHANC_INDEX_URL, ORTHANC_STORAGE_DIR): `backup` while it runs, its new folder's path last;
## `restore` with it stopped, into empty places (FORCE=1 overwrites); `verify-backup` any time.
backup: venv
	@test -n "$(BACKUP_DIR)" || { echo "usage: make backup BACKUP_DIR=dir" >&2; exit 2; }
	@$(BIN)/python -m sidecar backup '$(BACKUP_DIR)'

restore: venv
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=path [FORCE=1]" >&2; exit 2; }
	@$(BIN)/python -m sidecar restore '$(BACKUP)' $(if $(FORCE),--force)

verify-backup: venv
	@test -n "$(BACKUP)" || { echo "usage: make verify-backup BACKUP=path" >&2; exit 2; }
	@$(BIN)/python -m sidecar verify-backup '$(BACKUP)'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(VIEWER_DIR)/node_modules $(BROWSER_DIR)/node_modules
