# Two set-up commands for a fresh machine: `make demo` and `make test`. Both install the exact versions
# of requirements.lock (hash-checked), then the project itself; `make lock` re-locks (see below).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
UV_VERSION := 0.13.9

.PHONY: demo test lint serve clean lock

$(BIN)/python:
	$(PY) -m venv $(VENV)

# `pip check` fails when pyproject.toml asks for something the lock does not hold: run `make lock`.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-lock after changing the dependencies in pyproject.toml: every pin that still fits is kept. With
# UPGRADE=1 every pin moves to the newest release that pyproject.toml allows (then run `make test`).
lock: $(BIN)/python
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) -o $(LOCK)

demo: $(STAMP)
	$(BIN)/tidings demo

test: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/tidings serve

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
