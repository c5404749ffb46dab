# `make demo` and `make test` work on a fresh machine: each (re)builds .venv when it is missing or
# older than pyproject.toml or constraints.txt, then runs. The versions are constraints.txt's, the
# same the Dockerfile installs.
#
# `make demo` installs what the demo and `serve` need (the `train` and `serve` extras); `make test`
# adds `dev` and `cluster` (Ray) to the same .venv. Either way the dependencies go in first and the
# project last, on its own: Ray's wheel declares a console script `serve` too, and the package pip
# writes last owns .venv/bin/serve (docs/decisions.md #39). The check fails the install if
# .venv/bin/retrain or .venv/bin/serve is not the project's.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt
DEMO_EXTRAS := train,serve
TEST_EXTRAS := train,serve,dev,cluster
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
INSTALL_INPUTS := pyproject.toml constraints.txt scripts/extra_requirements.py scripts/check_console_scripts.py

.PHONY: demo test lint bench constraints clean

# $(call install,EXTRAS): the extras' dependencies, then the project alone, then the check.
define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/extra_requirements.py $(1) > $(VENV)/requirements.txt
	$(PIP) --requirement $(VENV)/requirements.txt
	$(PIP) --no-deps --force-reinstall --editable .
	$(BIN)/python scripts/check_console_scripts.py
endef

$(DEMO_STAMP): $(INSTALL_INPUTS)
	$(call install,$(DEMO_EXTRAS))
	touch $@

# The test install holds the demo's too.
$(TEST_STAMP): $(INSTALL_INPUTS)
	$(call install,$(TEST_EXTRAS))
	touch $(DEMO_STAMP) $@

# The page's "Run in this browser": MediaPipe Tasks for Web vendored from npm (needs Node.js's npm).
WEB_VENDOR := serve/web/vendor/tasks-vision/package.json

$(WEB_VENDOR): serve/web/device/package.json serve/web/device/package-lock.json scripts/vendor_web.py
	$(PYTHON) scripts/vendor_web.py

demo: $(DEMO_STAMP)
	$(BIN)/retrain --image_dir image_dirs/digits

test: $(TEST_STAMP) $(WEB_VENDOR) lint
	$(BIN)/pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(TEST_STAMP)
	$(BIN)/python bench/demo.py
	$(BIN)/python bench/bottlenecks.py
	$(BIN)/python bench/runs.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/jobs.py
	$(BIN)/python bench/variants.py

# After changing a dependency in pyproject.toml: install it, then pin everything again.
constraints: $(TEST_STAMP)
	$(BIN)/python scripts/update_constraints.py

clean:
	rm -rf $(VENV) models .pytest_cache serve/web/vendor
