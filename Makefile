# `make demo` and `make test` work on a fresh machine: both (re)build .venv when it is missing or
# older than pyproject.toml or constraints.txt, then run. The versions are constraints.txt's, the
# same the Dockerfile installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt -e ".[train,serve,dev,cluster]"
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
	$(BIN)/python bench/runs.py
	$(BIN)/python bench/cluster.py

# After changing a dependency in pyproject.toml: install it, then pin everything again.
constraints: $(STAMP)
	$(BIN)/python scripts/update_constraints.py

clean:
	rm -rf $(VENV) models .pytest_cache
