# Two entry points for a fresh machine: `make demo` (PIPELINE=fraud|fraud_knn|pricing|agrawal)
# and `make test`.
# The virtual environment is reused while pyproject.toml is unchanged, rebuilt when not;
# Kafka's jars are cached outside the repository by `driftline stack up`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-faults install stack-up stack-down lint clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

stack-up: install
	$(BIN)/driftline stack up

stack-down: install
	$(BIN)/driftline stack down

PIPELINE ?= fraud

demo: stack-up
	$(BIN)/driftline demo --pipeline $(PIPELINE)

# Style, then the import contract of pyproject.toml: layers that import only downwards, no cycle.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: stack-up lint
	$(BIN)/pytest -m "not faults"

# The fault suite (tests/integration/test_faults.py, about 5 minutes): Redis, the broker
# and Milvus Lite restarted mid-stream, a worker killed, poison events, SIGTERM under a
# backlog; each case prints its accounting. .ci/run runs it after `make test`.
test-faults: stack-up
	$(BIN)/pytest -m faults -s tests/integration/test_faults.py

# Ingest throughput against a bare consumer, a bare Faust agent and Quix Streams
# (benchmarks/ingest.py, 5 to 10 minutes); it builds Quix's own environment under
# ~/.cache/driftline/peer-venv the first time. BENCH_ARGS="--events 3000" for a short run.
BENCH_ARGS ?=

bench: stack-up
	$(BIN)/python benchmarks/ingest.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
