# Easel: every target installs what it needs (.venv, generated stubs, buf) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen/python
PROTOS := $(shell find protos -name '*.proto')
STUBS := $(GEN)/.stamp
BUF := node_modules/.bin/buf
NODE_MODULES := node_modules/.installed

.PHONY: run test lint protos bench clean

run: $(STUBS)
	$(VENV)/bin/easel-run

test: lint $(STUBS) $(NODE_MODULES)
	$(PY) -m pytest

lint: $(VENV)/.installed $(NODE_MODULES)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint protos

protos: $(STUBS)

bench: $(STUBS)
	@for script in bench/*.py; do \
		echo "== $$script"; $(PY) $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) gen node_modules .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# torch first, pinned to the CPU wheel, so that no other requirement pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	mkdir -p $(GEN)/easel
	$(VENV)/bin/pip install --quiet -e '.[inference,dev]'
	touch $@

# Python stubs for every proto, regenerated whenever a proto changes.
$(STUBS): $(PROTOS) $(VENV)/.installed
	rm -rf $(GEN)/easel
	mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(GEN) --pyi_out=$(GEN) \
		--grpc_python_out=$(GEN) $(PROTOS)
	find $(GEN)/easel -type d -exec touch {}/__init__.py \;
	touch $@

# From npm, pinned in package.json: buf (its binary ships in the package) and the Node.js
# gRPC client the tests use. `npm ci` installs exactly what package-lock.json lists (every
# platform's binary package of buf is in it) and never rewrites it, so a fresh clone stays
# clean; it empties node_modules first, so the stamp is made after it.
$(NODE_MODULES): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@
