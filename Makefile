# synctrail: `make run` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt typecheck bench clean compose-up compose-down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: embedded broker + every synctrail process, one process tree (Ctrl-C stops all)
run: $(STAMP)
	$(BIN)/synctrail dev

## test: the whole suite against a real embedded broker
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: throughput/latency benchmarks; each prints BENCH lines with its baseline and ratio
bench: $(STAMP)
	$(BIN)/python -m bench.bridge
	$(BIN)/python -m bench.stream

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
