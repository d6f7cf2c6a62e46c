# One entry point for people and CI. Everything runs from the project virtualenv in .venv.
# `make help` lists every target: each rule carries a `## what it does` comment, which is the help text.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

# An install builds the project, and the build generates the gRPC code: so a change to any of
# these re-installs. The stamps live in the venv, so deleting the venv resets them.
INSTALL_INPUTS := pyproject.toml setup.py proto/generate.py $(wildcard proto/music/v1/*.proto)
RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed

.DEFAULT_GOAL := help
.PHONY: help demo test fuzz lint proto venv test-venv bench bench-large clean

help: ## list the targets with what they do
	@awk 'BEGIN { FS = ":[^#]*## " } /^[A-Za-z0-9_.-]+:[^#]*## / { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The runtime only: what the services and the pipeline need, no test tools (make demo).
$(RUNTIME_STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The runtime plus the test tools (make test). One install, then both stamps are current.
$(TEST_STAMP): $(INSTALL_INPUTS) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(RUNTIME_STAMP) $@

venv: $(RUNTIME_STAMP) ## create .venv with the project installed (runtime only; idempotent)

test-venv: $(TEST_STAMP) ## create .venv with the project and its test tools (idempotent)

demo: $(RUNTIME_STAMP) ## run the whole pipeline on data/stream_data.csv: three services as processes, then the client
	$(BIN)/music-analytics demo --data data/stream_data.csv

# Also done by every install (setup.py); this re-runs it after editing proto/ without a version bump.
proto: $(RUNTIME_STAMP) ## regenerate the gRPC code from proto/ into proto/gen
	$(BIN)/pip install --quiet --no-deps -e .

lint: $(TEST_STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check services client tests proto/generate.py bench

test: $(TEST_STAMP) ## ruff and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

# `make test` runs each fuzz property with a bounded number of examples (tests/fuzzing.py); this runs
# FUZZ_EXAMPLES of each in-process property (a fifth of that through real services) and prints
# Hypothesis' statistics: examples run, outcomes seen. Failures found are kept in .hypothesis/ and
# replayed first next time. pytest's per-test timeout is lifted: one property may run for minutes.
FUZZ_EXAMPLES ?= 5000

fuzz: $(TEST_STAMP) ## fuzz the stream decoders, the CSV reader and the importers with FUZZ_EXAMPLES (5000) examples per property
	MUSIC_ANALYTICS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -ra --timeout=0 \
		--hypothesis-show-statistics tests/test_fuzz_decoders.py tests/test_fuzz_csv.py tests/test_sources_fuzz.py

bench: $(TEST_STAMP) ## pipeline against DuckDB at 1M and 10M events (data generated and cached in bench/data/)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# 10M beside 100M: the growth of the time per event is measured in one run, on one machine state.
bench-large: $(TEST_STAMP) ## pipeline against DuckDB at 10M and 100M events, 1 replica (about 40 GB of free disk, an hour)
	$(BIN)/python -m bench.run --sizes 10000000,100000000 --replicas 1 $(BENCH_ARGS)

clean: ## remove .venv, generated code and build output
	rm -rf $(VENV) proto/gen build *.egg-info .pytest_cache

# Kubernetes targets for users with Docker (or podman) and kind (k8s/kind.mk), and for a real
# cluster (k8s/cluster/cluster.mk, optional: included when present).
-include k8s/kind.mk
-include k8s/cluster/cluster.mk
