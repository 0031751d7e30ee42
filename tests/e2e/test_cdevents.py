"""CDEvents on ``<prefix>cdevents``: the example payloads through a real worker, with both
processing guarantees (``at_least_once`` on both brokers, ``exactly_once`` on Apache Kafka).

Every record read back is a CDEvent that validates against the CDEvents specification's own
JSON Schema of its type (vendored in ``schemas/cdevents/``), of the type the rules predict for
its place in the app's deployments, with its CloudEvents headers as the CDEvents binding maps
its context, and one per successful deployment that has a destination and an image.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streams.domain.cdevents import (
    SERVICE_DEPLOYED,
    SERVICE_UPGRADED,
    event_id,
    image_purl,
)
from streams.domain.cloudevents import default_source
from streams.kafka.setup import ensure_topics
from tests.contracts import validate_cdevent, validate_record
from tests.e2e.harness import FixtureEvent, Worker, fixture_events
from tests.support import (
    assert_cloudevents_headers_on_every_record,
    produce,
    wait_for_records,
)

#: Per app, the CDEvent types the example payloads give, in delivery order (docs/standard-events.md:
#: payments-api, cluster-rbac and tenant-configs are bare bodies, 13 failed, 04 a duplicate).
EXPECTED_TYPES = {
    "argocd/guestbook": [SERVICE_DEPLOYED, SERVICE_UPGRADED, SERVICE_UPGRADED, SERVICE_UPGRADED],
    "argocd/ingress-nginx": [SERVICE_DEPLOYED, SERVICE_UPGRADED],
    "argocd/storefront": [SERVICE_DEPLOYED, SERVICE_UPGRADED],
}
#: every topic the worker writes for these payloads (sync-events was written by the test)
WRITTEN = ("deployments", "notifications", "metrics", "cdevents")


async def _cdevents_of_the_example_payloads(bootstrap: str, prefix: str) -> None:
    """Produce the example payloads, then check what the worker writes on ``cdevents``."""
    events: list[FixtureEvent] = list(fixture_events())
    await produce(bootstrap, f"{prefix}sync-events", [(e.key.encode(), e.raw) for e in events])
    expected = sum(len(types) for types in EXPECTED_TYPES.values())
    found = await wait_for_records(bootstrap, f"{prefix}cdevents", expected, timeout=90)
    announced = [e for e in events if not e.expected.get("duplicateOf")]
    written = await wait_for_records(bootstrap, f"{prefix}deployments", len(announced))
    deployments = {r.value["delivery_id"]: r.value for r in written}

    per_app: dict[str, list[str]] = collections.defaultdict(list)
    for record in sorted(found, key=lambda r: (r.partition, r.offset)):
        event = record.value
        validate_cdevent(event)
        per_app[record.key].append(event["context"]["type"])
        deployment = deployments[event["customData"]["deliveryId"]]  # KeyError: none written
        validate_record(deployment)
        assert deployment["operation"]["phase"] == "Succeeded", record.key
        assert event["context"]["id"] == event_id(deployment)
        assert event["context"]["source"] == default_source(prefix)
        assert event["subject"]["id"] == record.key
        assert event["customData"]["artifactIds"] == [image_purl(i) for i in deployment["images"]]
    assert dict(per_app) == EXPECTED_TYPES
    assert len(found) == expected  # no repeat, nothing for the failed or bare-only deployments
    on_topics = await assert_cloudevents_headers_on_every_record(bootstrap, prefix, WRITTEN)
    assert on_topics["cdevents"] == expected


async def test_the_example_payloads_give_one_valid_cdevent_per_placed_successful_deployment(
    broker, topics, start_worker
):
    worker = start_worker()  # at_least_once, the default
    await worker.wait_ready()
    await _cdevents_of_the_example_payloads(broker.bootstrap, topics)


@pytest.fixture
async def kafka_worker(
    apache_kafka, prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[[str], Worker]]:
    """Start a worker on Apache Kafka with this test's topics: ``kafka_worker(guarantee)``."""
    await ensure_topics(apache_kafka.bootstrap, prefix, partitions=8)
    started: list[Worker] = []

    def start(guarantee: str) -> Worker:
        env = {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": apache_kafka.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": prefix,
            "SYNCTRAIL_WORKER_ID": f"w{uuid.uuid4().hex[:8]}",
            "SYNCTRAIL_PROCESSING_GUARANTEE": guarantee,
            "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
            "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
            "SYNCTRAIL_WORKER_BATCH_WITHIN_S": "0.01",
            "SYNCTRAIL_WORKER_DATA_DIR": str(tmp_path / f"worker-{len(started)}-data"),
        }
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)  # type: ignore[arg-type]
        return worker  # type: ignore[return-value]

    yield start
    for worker in started:
        worker.kill()
        print(f"--- {worker.log_path.name} (last lines) ---\n" + worker.log()[-4000:])


async def test_exactly_once_writes_the_cdevents_in_its_transactions(
    apache_kafka, prefix: str, kafka_worker: Callable[[str], Any]
):
    worker = kafka_worker("exactly_once")
    await worker.wait_ready()
    # read read_committed: only what the worker's transactions committed is seen
    await _cdevents_of_the_example_payloads(apache_kafka.bootstrap, prefix)
