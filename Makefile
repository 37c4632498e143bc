# Both targets create and reuse .venv: torch's CPU build first (a bare `torch` pulls CUDA wheels).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml

.PHONY: run test test-fast test-orders bench venv clean-data docs-pages system-packages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/llmill run $(CONFIG)

# Tests use Debian packages: the Python docs (real HTML pages that need no network),
# PostgreSQL 15 (the Prefect server's database in docker-compose, run natively by the tests)
# and chromium (headless, for the Prefect UI).
docs-pages:
	@test -d /usr/share/doc/python3.11/html || (apt-get update -q && apt-get install -y -q python3.11-doc)

system-packages: docs-pages
	@test -x /usr/lib/postgresql/15/bin/initdb || (apt-get update -q && apt-get install -y -q postgresql-15)
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# pytest-randomly shuffles the order on every run and prints its seed; replay an order with
# PYTEST_ARGS=--randomly-seed=N (or turn shuffling off with -p no:randomly). Tests run on
# TEST_WORKERS xdist workers; those sharing an expensive fixture go to one worker (conftest.py).
# One per CPU (at most 8), each pinned to its CPU. Two per CPU were tried on 2 cores: 652-794 s of
# tests and 1019-1290 s of CPU against 606 s and 909 s at one per CPU (bench/RESULTS.md).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 8 ] && n=8; echo $$n)
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
PYTEST_ARGS ?=
FAST := not trainer and not prefect_server and not browser and not database and not dask_cluster
SEEDS ?= 1 2 3

test: $(STAMP) system-packages
	$(PYTEST) tests $(PYTEST_ARGS)

# The unit tier and the stage-level tests that start no trainer, Prefect server, browser, database or Dask cluster.
test-fast: $(STAMP) docs-pages
	$(PYTEST) -m "$(FAST)" tests $(PYTEST_ARGS)

# The whole suite once per seed, each a different order: an order-dependent test fails here.
test-orders: $(STAMP) system-packages
	set -e; for seed in $(SEEDS); do $(PYTEST) --randomly-seed=$$seed tests $(PYTEST_ARGS); done

# The peers live in their own venv: datatrove and rensa are not project dependencies.
# lxml_html_clean: without it datatrove's Trafilatura helper dies at import and every record times out.
.bench-venv/.installed:
	$(PY) -m venv .bench-venv
	.bench-venv/bin/pip install -q 'datatrove[processing]' lxml_html_clean spacy rensa warcio faust-cchardet python-magic orjson
	touch $@

bench: $(STAMP) docs-pages .bench-venv/.installed
	$(BIN)/python bench/data.py

clean-data:
	rm -rf data
