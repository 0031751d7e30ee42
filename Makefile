# synctrail: `make run` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt typecheck bench clean compose-up compose-down prometheus-tools wrk

# Debian packages some tests and benchmarks need; installed when missing (root, apt-get).
define apt_ensure
	@command -v $(1) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian package $(2) (for $(1))"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2)) >/dev/null; \
	  else echo "$(1) is missing: install Debian's '$(2)' package (apt-get install $(2))" >&2; exit 1; fi; }
endef

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: embedded broker + every synctrail process, one process tree (Ctrl-C stops all)
run: $(STAMP)
	$(BIN)/synctrail dev

prometheus-tools:
	$(call apt_ensure,promtool,prometheus)

wrk:
	$(call apt_ensure,wrk,wrk)

## test: the whole suite against a real embedded broker
test: $(STAMP) prometheus-tools
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
bench: $(STAMP) wrk
	$(BIN)/python -m bench.bridge
	$(BIN)/python -m bench.stream

## compose-up / compose-down: the production stack on Apache Kafka (needs Docker)
compose-up:
	docker compose -f compose/docker-compose.yml up -d --build

compose-down:
	docker compose -f compose/docker-compose.yml down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
