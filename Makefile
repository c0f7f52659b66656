# The README's two commands: `make demo` and `make test`. Everything installs from requirements.lock
# (the development lock: both programs and the test tools; `make locks` derives the images' locks).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
APT_PACKAGES := prometheus prometheus-pushgateway

.PHONY: demo test lint typecheck pytest venv apt-deps bench bench-cache bench-pubsub bench-streams clean locks

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[sync,test]'
	touch $@

venv: $(VENV)/.installed

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The demo serves the packaged MiniLM through its ONNX variants (exported and gated once, ~1 min).
DEMO_MODEL := .cache/models/all-MiniLM-L6-v2

$(DEMO_MODEL)/onnx/variants.json: $(VENV)/.installed
	$(BIN)/tabular-sync export --model all-MiniLM-L6-v2 --out $(DEMO_MODEL)

# One of the jobs reads examples/data/tickets.parquet (made by examples/make_tickets.py) and writes
# its results as Parquet parts under .cache/demo/ (three shards of 500 rows); the last command
# reads them back.
demo: $(VENV)/.installed $(DEMO_MODEL)/onnx/variants.json
	TABULAR_EMBEDDING_MODEL=$(DEMO_MODEL) TABULAR_SHARD_ROWS=500 $(BIN)/tabular-worker run \
		--input examples/jobs.jsonl --format summary
	$(BIN)/python examples/read_output.py .cache/demo/tickets-classified

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv apt-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# requirements-worker.lock and requirements-sync.lock (the images) from requirements.lock.
locks: venv
	$(BIN)/python docker/locks.py

bench: venv
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/tables.py

bench-cache: venv
	$(BIN)/python bench/cache.py --repeat 7

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

bench-pubsub: venv
	$(BIN)/python bench/pubsub.py

bench-streams: venv
	$(BIN)/python bench/streams.py

include infra/infra.mk
