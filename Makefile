# Both targets create and reuse .venv: torch's CPU build first (a bare `torch` pulls CUDA wheels).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml

.PHONY: run test bench venv clean-data docs-pages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/llmill run $(CONFIG)

# Extraction tests read Debian's Python docs: real HTML pages that need no network.
docs-pages:
	@test -d /usr/share/doc/python3.11/html || (apt-get update -q && apt-get install -y -q python3.11-doc) \
	  || echo "python3.11-doc not installable: the tests that need it will fail"

test: $(STAMP) docs-pages
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/data.py

clean-data:
	rm -rf data
