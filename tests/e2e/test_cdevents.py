"""CDEvents on ``<prefix>cdevents``: the example payloads through a real worker, with both
processing guarantees (``at_least_once`` on both brokers, ``exactly_once`` on Apache Kafka).

Every record read back is a CDEvent that validates against the CDEvents specification's own
JSON Schema of its type (vendored in ``schemas/cdevents/``), of the type the rules predict for
its place in the app's deployments, with its CloudEvents headers as the CDEvents binding maps
its context, and one per successful deployment that has a destination and an image.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from streams.domain.cdevents import (
    SERVICE_DEPLOYED,
    SERVICE_UPGRADED,
    event_id,
    image_purl,
)
from streams.domain.cloudevents import default_source
from streams.kafka.setup import ensure_topics
from tests.contracts import validate_cdevent, validate_record
from tests.e2e.harness import FixtureEvent, fixture_events
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


async def test_exactly_once_writes_the_cdevents_in_its_transactions(
    apache_kafka, prefix: str, kafka_worker: Callable[[str], Any]
):
    await ensure_topics(apache_kafka.bootstrap, prefix, partitions=8)
    worker = kafka_worker("exactly_once")
    await worker.wait_ready()
    # read read_committed: only what the worker's transactions committed is seen
    await _cdevents_of_the_example_payloads(apache_kafka.bootstrap, prefix)
