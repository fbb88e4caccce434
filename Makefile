# Every target here is what CI runs too; see .ci/run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock files (docs/development.md): every package pinned with its hashes. dev.txt is
# what `make install` puts in .venv (the service, test and lint extras); runtime.txt is the
# service alone, for configs/Dockerfile, resolved to the same versions.
DEV_LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt
UV := uv>=0.13,<0.14
COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command 'make lock'

.PHONY: install run worker test lint bench clean lock lock-upgrade

install: $(STAMP)

$(STAMP): pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-resolve after editing dependencies in pyproject.toml, keeping every pin that still fits.
lock:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(UV)'
	$(COMPILE) --extra test --extra lint -o $(DEV_LOCK)
	$(COMPILE) --constraint $(DEV_LOCK) -o $(RUNTIME_LOCK)

# The same, taking the newest release inside each range.
lock-upgrade:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(UV)'
	$(COMPILE) --upgrade --extra test --extra lint -o $(DEV_LOCK)
	$(COMPILE) --upgrade --constraint $(DEV_LOCK) -o $(RUNTIME_LOCK)

run: $(STAMP)
	$(BIN)/ondoki serve

worker: $(STAMP)
	$(BIN)/ondoki worker --queues celery,media

# The JavaScript client's locked packages, for its tests (Node 20 with npm).
JS_DEPS := clients/js/node_modules/.package-lock.json

$(JS_DEPS): clients/js/package-lock.json
	cd clients/js && npm ci --no-audit --no-fund

test: $(STAMP) $(JS_DEPS)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
