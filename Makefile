# `make demo` and `make test` work on a fresh machine: both (re)build .venv when it is missing or
# older than pyproject.toml, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[train,serve,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/retrain --image_dir image_dirs/digits

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bottlenecks.py

clean:
	rm -rf $(VENV) models .pytest_cache
