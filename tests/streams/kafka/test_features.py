"""What each broker answers: idempotent producers on Apache Kafka, none on the embedded one."""

from __future__ import annotations

import contextlib

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from connectors.broker import EmbeddedBroker, free_port
from streams.kafka.features import (
    EMBEDDED_FETCH_WAIT_MS,
    KAFKA_FETCH_WAIT_MS,
    BrokerFeatures,
    fetch_wait_ms,
    probe,
    resolve_idempotence,
    use_idempotence,
)
from streams.kafka.produce import OutputProducer
from tests.apache_kafka.node import KafkaNode
from tests.support import read_topic


async def test_the_embedded_broker_gives_no_producer_ids_and_forgets_topics(
    broker: EmbeddedBroker,
) -> None:
    features = await probe(broker.bootstrap)
    assert features.cluster_id == "synctrail-embedded"
    assert features.idempotence is False
    assert features.idempotence_error == "InitProducerId answered error -1"
    assert features.forgets_topics


async def test_apache_kafka_gives_producer_ids_and_keeps_topics(apache_kafka: KafkaNode) -> None:
    features = await probe(apache_kafka.bootstrap)
    assert features.idempotence is True and features.idempotence_error is None
    assert features.cluster_id == apache_kafka.cluster_id
    assert not features.forgets_topics


@pytest.mark.parametrize(
    ("setting", "supported", "expected"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("auto", None, False),  # the broker could not be asked
        ("on", False, True),
        ("on", None, True),
        ("off", True, False),
    ],
)
def test_the_setting_decides_unless_it_is_auto(
    setting: str, supported: bool | None, expected: bool
) -> None:
    features = None if supported is None else BrokerFeatures("c", supported)
    assert use_idempotence(setting, features) is expected  # type: ignore[arg-type]


async def test_an_unreachable_broker_leaves_auto_off_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    enabled, features = await resolve_idempotence("auto", f"127.0.0.1:{free_port()}", timeout_s=1)
    assert (enabled, features) == (False, None)
    assert "producing without idempotence" in caplog.text


async def test_idempotence_on_against_the_embedded_broker_fails_at_the_first_produce(
    broker: EmbeddedBroker, prefix: str
) -> None:
    # what SYNCTRAIL_KAFKA_IDEMPOTENCE=on does there: the broker gives no producer id
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=16384, enable_idempotence=True)
    try:
        with pytest.raises(KafkaError, match="UnknownError"):
            await outputs.start()
            await outputs.send_placed([(f"{prefix}none", 0, b"k", b"{}")])
    finally:
        with contextlib.suppress(KafkaError):
            await outputs.stop()


async def test_the_output_producer_writes_idempotently_on_apache_kafka(
    apache_kafka: KafkaNode, prefix: str
) -> None:
    topic = f"{prefix}outputs"
    admin = AIOKafkaAdminClient(bootstrap_servers=apache_kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    enabled, _ = await resolve_idempotence("auto", apache_kafka.bootstrap)
    outputs = OutputProducer(
        [apache_kafka.bootstrap], max_batch_bytes=16384, enable_idempotence=enabled
    )
    await outputs.start()
    try:
        placed = await outputs.place([(topic, f"app-{i}".encode(), b"{}") for i in range(20)])
        await outputs.send_placed(placed)  # fails where the broker gives no producer id
    finally:
        await outputs.stop()
    assert enabled is True
    assert len(await read_topic(apache_kafka.bootstrap, topic)) == 20


async def test_the_worker_waits_short_on_the_embedded_broker_and_kafkas_default_on_kafka(
    broker: EmbeddedBroker, apache_kafka: KafkaNode
) -> None:
    from streams.settings import WorkerSettings
    from streams.worker import resolve_for_broker

    embedded = await resolve_for_broker(WorkerSettings(kafka_bootstrap=broker.bootstrap))
    assert embedded.worker_fetch_max_wait_ms == EMBEDDED_FETCH_WAIT_MS
    assert embedded.kafka_idempotence == "off"  # decided once, at start, by the same probe
    kafka = await resolve_for_broker(WorkerSettings(kafka_bootstrap=apache_kafka.bootstrap))
    assert kafka.worker_fetch_max_wait_ms == KAFKA_FETCH_WAIT_MS
    assert kafka.kafka_idempotence == "on"
    chosen = WorkerSettings(kafka_bootstrap=apache_kafka.bootstrap, worker_fetch_max_wait_ms=7)
    assert (await resolve_for_broker(chosen)).worker_fetch_max_wait_ms == 7
    assert fetch_wait_ms(None, None) == EMBEDDED_FETCH_WAIT_MS  # the broker could not be asked


async def test_an_explicit_idempotence_setting_asks_no_broker() -> None:
    # nothing listens there: a probe would fail (and `auto` would be off)
    enabled, features = await resolve_idempotence("on", f"127.0.0.1:{free_port()}", timeout_s=1)
    assert (enabled, features) == (True, None)
