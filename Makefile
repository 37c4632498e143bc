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
	@test -d /usr/share/doc/python3.11/html || (apt-get update -q && apt-get install -y -q python3.11-doc)

test: $(STAMP) docs-pages
	$(BIN)/python -m pytest -q tests

# The peers live in their own venv: datatrove and rensa are not project dependencies.
.bench-venv/.installed:
	$(PY) -m venv .bench-venv
	.bench-venv/bin/pip install -q 'datatrove[processing]' spacy rensa warcio faust-cchardet python-magic orjson
	touch $@

bench: $(STAMP) docs-pages .bench-venv/.installed
	$(BIN)/python bench/data.py

clean-data:
	rm -rf data
