# synctrail: `make run` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint fmt typecheck bench chaos clean compose-up compose-down prometheus-tools kubectl wrk java kafka-jars k8s-manifests

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

# kubectl carries Kustomize: tests/deploy renders deploy/kubernetes with it (no cluster needed).
kubectl:
	$(call apt_ensure,kubectl,kubectl)

## k8s-manifests: copy compose's alert rules and dashboard into deploy/kubernetes (tests check)
k8s-manifests: $(STAMP)
	$(BIN)/python deploy/kubernetes/generate.py

wrk:
	$(call apt_ensure,wrk,wrk)

## kafka-jars: Apache Kafka's jars (tests/apache_kafka/pom.xml), copied once from Maven Central
KAFKA_VERSION := 4.1.1
KAFKA_JARS    := var/kafka/$(KAFKA_VERSION)

java:
	$(call apt_ensure,java,default-jdk-headless)
	$(call apt_ensure,mvn,maven)

$(KAFKA_JARS)/.copied: tests/apache_kafka/pom.xml
	@echo "copying Apache Kafka $(KAFKA_VERSION)'s jars from Maven Central into $(KAFKA_JARS)"
	@mvn -q -B -f tests/apache_kafka/pom.xml dependency:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(KAFKA_JARS) >/tmp/synctrail-mvn.log 2>&1 || { \
	  tail -30 /tmp/synctrail-mvn.log >&2; \
	  echo "could not fetch Apache Kafka's jars from Maven Central (see above); the suite needs them" >&2; exit 1; }
	touch $@

kafka-jars: java $(KAFKA_JARS)/.copied

## test: the whole suite against the embedded broker and Apache Kafka
test: $(STAMP) prometheus-tools kubectl wrk kafka-jars
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: throughput/latency benchmarks on the embedded broker and on Apache Kafka; each prints
## BENCH lines (<broker>.<figure>) with its baseline and ratio, taken on the same broker.
## Options pass through, e.g. make bench BENCH_STREAM_ARGS="--broker kafka --processing-guarantee both"
BENCH_BRIDGE_ARGS ?=
BENCH_STREAM_ARGS ?=
bench: $(STAMP) wrk kafka-jars
	$(BIN)/python -m bench.bridge $(BENCH_BRIDGE_ARGS)
	$(BIN)/python -m bench.stream $(BENCH_STREAM_ARGS)

## chaos: fault scenarios on real processes (tests/chaos), each printing CHAOS lines; exits
## non-zero when a figure breaks its bound. `make chaos SCENARIOS="kafka-stall"` runs some.
SCENARIOS ?=
chaos: $(STAMP) kafka-jars
	$(BIN)/python -m tests.chaos $(SCENARIOS)

## compose-up / compose-down: the production stack on Apache Kafka (needs Docker)
compose-up:
	docker compose -f compose/docker-compose.yml up -d --build

compose-down:
	docker compose -f compose/docker-compose.yml down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
