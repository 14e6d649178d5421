# callmeter: `make demo` runs the platform and a real test; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: install system-deps proto proto-check lint test demo bench up clean

install: $(VENV)/.installed

# Python 3.11 venv with every extra; re-run when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $@

# SIP peers the interop tests use, from Debian's packages (needs root, as on CI).
system-deps:
	tools/install_system_deps.sh

proto: install
	$(PY) tools/gen_protos.py

proto-check: install
	$(PY) tools/gen_protos.py --check

lint: install
	$(BIN)/lint-imports

test: install system-deps
	$(PY) -m pytest tests

demo: install
	$(BIN)/callmeter demo

bench: install system-deps
	$(PY) -m bench

up: install
	$(BIN)/callmeter up --data-dir .callmeter

clean:
	rm -rf $(VENV) .callmeter .pytest_cache
