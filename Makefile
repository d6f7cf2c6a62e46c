# One entry point for people and CI. Everything runs from the project virtualenv in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test lint proto venv bench clean

# Create the virtualenv and install the project with its test tools (idempotent).
$(BIN)/music-analytics: pyproject.toml setup.py $(wildcard proto/music/v1/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/music-analytics

# Run the whole pipeline on the bundled data: three services as processes, then the client.
demo: venv
	$(BIN)/music-analytics demo --data data/stream_data.csv

# Regenerate the gRPC code from proto/ (also done by every install).
proto: venv
	$(BIN)/python proto/generate.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check services client tests proto/generate.py bench

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

# Pipeline against DuckDB at 1M and 10M events (generated and cached in bench/data/): see README.
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) proto/gen build *.egg-info .pytest_cache

# Kubernetes targets for users with Docker and kind (k8s/kind.mk).
-include k8s/kind.mk
