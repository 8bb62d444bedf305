# qsd: two commands on a fresh machine — `make reproduce` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= tiny_pixart
RUN ?= default
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PIP_QUIET := 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)

export HF_HUB_OFFLINE := 1
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup reproduce results smoke test unit bench lab figures clean

setup: $(VENV)/.setup-stamp

# Idempotent: re-runs only when the dependency files change. torch first, alone, then the rest under
# constraints.txt (which pins torch==2.13.0), so no CUDA wheel is ever pulled.
$(VENV)/.setup-stamp: pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e '.[dev]' $(PIP_QUIET)
	! $(BIN)/python -m pip list 2>/dev/null | grep -qi '^nvidia'
	touch $@

# Every notebook, in order, into data/runs/$(MODEL)/$(RUN)/<NN_stage>/ (figures inline in the executed notebooks).
reproduce: setup
	@for nb in $(NOTEBOOKS); do \
	  stage=$$(basename $$nb .ipynb); out=data/runs/$(MODEL)/$(RUN)/$$stage; mkdir -p $$out; \
	  echo "== $$stage -> $$out"; \
	  $(BIN)/papermill $$nb $$out/$$stage.ipynb --cwd . -k python3 \
	    -p model_id $(MODEL) -p run_id $(RUN) $(PAPERMILL_ARGS); \
	done

# The run-derived tables: docs/results.md and the generated blocks of README.md, from data/runs/$(MODEL)/$(RUN).
results: setup
	$(BIN)/python -m qsd.report --run data/runs/$(MODEL)/$(RUN) --readme README.md

# The papermill smoke run of every notebook (also part of `make test`).
smoke: setup
	$(BIN)/pytest -m notebook tests/test_notebooks.py

# Lint, unit tests + smoke run of every notebook, then nbval over the executed smoke notebooks (both headless:
# MPLBACKEND=Agg, as tests/conftest.py sets for the smoke run).
test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest
	MPLBACKEND=Agg $(BIN)/pytest --nbval -p no:cacheprovider --nbval-current-env build/smoke/*.ipynb

unit: setup
	$(BIN)/pytest -m "not notebook"

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build data/runs
