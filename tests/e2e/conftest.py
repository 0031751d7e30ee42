"""Fixtures for whole-pipeline tests: worker processes on the session's embedded broker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.e2e.harness import Worker


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
        # Tansu reports end offsets per batch; see CommonSettings.kafka_producer_max_batch_bytes
        "SYNCTRAIL_KAFKA_PRODUCER_MAX_BATCH_BYTES": "1",
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
