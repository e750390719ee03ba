# Every target does its own set-up, idempotently: system packages, virtualenv, Docker engine,
# images. `make demo` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help setup system venv docker images oip-servers lint typecheck unit integration test demo testbed clean

help:
	@echo "make demo   - start the loopback testbed, inject a fault, show what happens"
	@echo "make test   - ruff, mypy --strict, unit and integration tests (all set-up included)"
	@echo "make testbed - start the testbed and keep it running for exploring by hand"

system:
	@scripts/install-system.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

setup: system venv docker images

docker: system
	@scripts/ensure-docker.sh

images: docker venv
	@$(PY) -m testbed images

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest tests/unit -m "not integration" $(PYTEST_ARGS)

# real MLServer and KServe (PyPI) in their own virtualenv, build/oip-venv (tests/integration/test_protocols_real.py)
oip-servers: system
	@scripts/install-oip-servers.sh

integration: setup oip-servers
	$(VENV)/bin/pytest tests -m integration $(PYTEST_ARGS)

test: lint typecheck unit integration

demo: setup
	$(PY) -m testbed demo

testbed: setup
	$(PY) -m testbed up --keep

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
