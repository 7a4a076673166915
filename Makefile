# The two Quick start commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= demo-run

.PHONY: install demo test lint unit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Sample videos + tiny offline Molmo2 + a full run; prints the summary and the tables.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pipeline demo --workdir $(WORKDIR)

lint: $(STAMP)
	$(PY) -m ruff check pipeline jobs tests benchmarks
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

## Everything CI runs: lint, type check, the whole test suite.
test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest -m "not integration"
