# Two set-up commands for a fresh machine: `make demo` and `make test`. Both install the exact versions
# of requirements.lock (hash-checked), then the project itself; `make lock` re-locks (see below).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV_VERSION := 0.13.9
# The dashboard's front-end packages, from package-lock.json (npm ci), copied where the app serves them.
VENDOR := src/tidings/web/static/vendor
VENDOR_STAMP := $(VENDOR)/.installed
VENDOR_FILES := node_modules/htmx.org/dist/htmx.min.js node_modules/uplot/dist/uPlot.iife.min.js \
  node_modules/uplot/dist/uPlot.min.css
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint serve clean lock screenshots

$(BIN)/python:
	$(PY) -m venv $(VENV)

# `pip check` fails when pyproject.toml asks for something the lock does not hold: run `make lock`.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

$(VENDOR_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp $(VENDOR_FILES) $(VENDOR)/
	touch $(VENDOR_STAMP)

# The browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
$(CHROMIUM):
	apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)

# Re-lock after changing the dependencies in pyproject.toml: every pin that still fits is kept. With
# UPGRADE=1 every pin moves to the newest release that pyproject.toml allows (then run `make test`).
lock: $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) -o $(LOCK)

demo: $(STAMP) $(VENDOR_STAMP)
	$(BIN)/tidings demo

test: $(STAMP) $(VENDOR_STAMP) $(CHROMIUM)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy

serve: $(STAMP) $(VENDOR_STAMP)
	$(BIN)/tidings serve

# docs/screenshots/*.png: the browser tests, with each main page's picture written (not by `make test`).
screenshots: $(STAMP) $(VENDOR_STAMP) $(CHROMIUM)
	TIDINGS_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/web

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache node_modules $(VENDOR)
