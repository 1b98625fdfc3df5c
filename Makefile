# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium (installed when absent) for the browser tests and the demo's screenshots.
demo: $(STAMP)
	scripts/chromium.sh
	$(BIN)/python -m medlab.demo

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's package, installed when absent) for
# the suites that run against each hub database backend; stopped whatever the tests say.
PG_DIR ?= /tmp/medlab-pg-$(shell id -u)-$(notdir $(CURDIR))
JOBS ?= 2  # pytest-xdist workers: the suite is CPU-bound and mostly single-threaded

test: check
	scripts/chromium.sh
	scripts/pg.sh start $(PG_DIR)
	MEDLAB_PG_URL=$$(cat $(PG_DIR)/url) MEDLAB_BROWSER=required HYPOTHESIS_PROFILE=ci \
	  $(BIN)/pytest -q -n $(JOBS) --dist worksteal; \
	  status=$$?; scripts/pg.sh stop $(PG_DIR); exit $$status

bench: $(STAMP)
	$(BIN)/python benchmarks/load_bench.py
	$(BIN)/python benchmarks/synth_bench.py
	$(BIN)/python benchmarks/cohort_bench.py
	$(BIN)/python benchmarks/study_bench.py
	$(BIN)/python benchmarks/privacy_bench.py
	$(BIN)/python benchmarks/ledger_bench.py
	$(BIN)/python benchmarks/coverage.py
	$(BIN)/python benchmarks/governance_bench.py
	$(BIN)/python benchmarks/store_bench.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
