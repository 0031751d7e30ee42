"""Fixtures for whole-pipeline tests: worker processes on each of the session's brokers.

Every test here runs on the embedded broker and on Apache Kafka (``[embedded]``/``[kafka]``
in its id; ``pytest --broker kafka`` runs one). Both serve the same ``bootstrap``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from connectors.broker import free_port
from tests.compose.conftest import real_prometheus  # noqa: F401  (re-exported for tests/e2e)
from tests.conftest import brokers_chosen
from tests.connectors.test_exporter import exporters  # noqa: F401  (re-exported for tests/e2e)
from tests.e2e.harness import Worker
from tests.e2e.pipeline import BRIDGE_TOKEN, HttpService, Pipeline, common_env
from tests.slack_server import SlackServer
from tests.support import Service


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker" in metafunc.fixturenames:
        metafunc.parametrize(
            "broker", brokers_chosen(metafunc.config), indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest):
    """The broker this test runs on: the embedded one or Apache Kafka (see the module)."""
    if request.param == "kafka":
        return request.getfixturevalue("apache_kafka")
    return request.getfixturevalue("embedded_broker")


@pytest.fixture
def worker_env(broker, topics: str) -> dict[str, str]:
    """Environment for workers of this test: own topics, own consumer group and changelogs."""
    return {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": topics,
        "SYNCTRAIL_WORKER_ID": f"w{uuid.uuid4().hex[:8]}",
        "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
        "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
        "SYNCTRAIL_LOG_LEVEL": "INFO",
        "SYNCTRAIL_WORKER_BATCH_WITHIN_S": "0.01",
    }


@pytest.fixture
async def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[Callable[..., Worker]]:
    """Start workers (child processes); all are stopped at the end of the test."""
    started: list[Worker] = []

    def start(**extra_env: str) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        data = tmp_path / f"worker-{len(started)}-data"
        env = {**worker_env, "SYNCTRAIL_WORKER_DATA_DIR": str(data), **extra_env}
        worker = Worker(env, log).start()
        started.append(worker)  # type: ignore[arg-type]
        return worker  # type: ignore[return-value]

    yield start
    for worker in started:
        worker.kill()
        # shown by pytest only when the test failed
        print(
            f"--- {worker.log_path.name} (last lines) ---\n"
            + "\n".join(worker.log().splitlines()[-80:])
        )


@pytest.fixture
async def start_pipeline(
    broker, topics: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> AsyncIterator[Callable[..., Pipeline]]:
    """``start_pipeline(slack_server, exporter=False, **worker_env)`` → bridge, worker and
    Slack connector (token mode, talking to ``slack_server``; and the exporter) started as child processes on this test's topics, not
    yet waited for (``await pipeline.wait_ready()``); all are killed at the end of the test."""
    started: list[Service] = []
    env = common_env(broker.bootstrap, topics)

    def start(slack_server: SlackServer, *, exporter: bool = False, **worker_env: str) -> Pipeline:
        def service(name: str, port: int, ready: str, **extra: str) -> HttpService:
            process = HttpService([name], {**env, **extra}, tmp_path / f"{name}.log", port, ready)
            started.append(process.start())
            return process

        bridge_port = free_port()
        bridge = service(
            "bridge",
            bridge_port,
            "/readyz",
            SYNCTRAIL_BRIDGE_PORT=str(bridge_port),
            SYNCTRAIL_BRIDGE_TOKENS=BRIDGE_TOKEN,
            SYNCTRAIL_BRIDGE_SPOOL_DIR=str(tmp_path / "spool"),
        )
        slack_port = free_port()
        slack = service(
            "slack",
            slack_port,
            "/healthz",
            SYNCTRAIL_SLACK_TOKEN=slack_server.token or "",
            SYNCTRAIL_SLACK_API_URL=slack_server.api_url,
            SYNCTRAIL_SLACK_GROUP_ID=f"{topics}slack",
            SYNCTRAIL_SLACK_METRICS_PORT=str(slack_port),
            # paced, but not at Slack's one message per second per channel
            SYNCTRAIL_SLACK_RATE_PER_CHANNEL_S="0.05",
            SYNCTRAIL_SLACK_BACKOFF_BASE_S="0.05",
        )
        metrics = None
        if exporter:
            exporter_port = free_port()
            metrics = service(
                "exporter", exporter_port, "/readyz", SYNCTRAIL_EXPORTER_PORT=str(exporter_port)
            )
        worker = start_worker(**worker_env)
        return Pipeline(broker.bootstrap, topics, bridge, worker, slack, metrics)

    yield start
    for process in started:
        process.kill()
        # shown by pytest only when the test failed
        print(f"--- {process.log_path.name} (last lines) ---\n" + process.log()[-6000:])


@pytest.fixture
async def workers(prefix: str, tmp_path: Path) -> AsyncIterator[Callable[..., Worker]]:
    """Start workers of one consumer group (``start(bootstrap, guarantee)``); all are killed at
    the end."""
    started: list[Worker] = []
    group = f"w{uuid.uuid4().hex[:8]}"

    def start(bootstrap: str, guarantee: str) -> Worker:
        index = len(started)
        env = {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": prefix,
            "SYNCTRAIL_WORKER_ID": group,
            "SYNCTRAIL_PROCESSING_GUARANTEE": guarantee,
            "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
            "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
            "SYNCTRAIL_WORKER_DATA_DIR": str(tmp_path / f"worker-{index}-data"),
        }
        worker = Worker(env, tmp_path / f"worker-{index}.log").start()
        started.append(worker)  # type: ignore[arg-type]
        return worker  # type: ignore[return-value]

    yield start
    for worker in started:
        worker.kill()
        print(f"--- {worker.log_path.name} (last lines) ---\n" + worker.log()[-4000:])


@pytest.fixture
def kafka_worker(apache_kafka, workers: Callable[..., Worker]) -> Callable[..., Worker]:
    """Start workers on Apache Kafka: ``kafka_worker(guarantee)``."""
    return lambda guarantee: workers(apache_kafka.bootstrap, guarantee)
