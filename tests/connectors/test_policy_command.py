"""``synctrail policy list``'s reading of the policy topic, against the embedded broker."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from connectors.broker import EmbeddedBroker
from connectors.policy_command import read_rules
from streams.policy_publish import publish_rules, remove_rule
from streams.settings import CommonSettings
from tests.support import assert_cloudevents_headers_on_every_record


async def test_the_rules_in_force_are_each_rules_latest_value_without_removed_ones(
    broker: EmbeddedBroker, topics: str, monkeypatch
) -> None:
    monkeypatch.setenv("SYNCTRAIL_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("SYNCTRAIL_TOPIC_PREFIX", topics)
    settings = CommonSettings()
    assert await read_rules(settings) == {}

    deny = {"id": "no-sidecar", "kind": "deny", "image": "quay.io/acme/sidecar:*", "reason": "a"}
    gone = {"id": "gone", "kind": "deny", "image": "docker.io/old/*", "reason": "b"}
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        await publish_rules(producer, topics, [deny, gone])
        await publish_rules(producer, topics, [{**deny, "reason": "changed"}])
        await remove_rule(producer, topics, "gone")
    finally:
        await producer.stop()

    on_topics = await assert_cloudevents_headers_on_every_record(broker.bootstrap, topics)
    assert on_topics["policy"] == 4  # three rules and a tombstone, each with its headers
    assert on_topics["sync-events"] == 3 * settings.partitions  # a check per partition each

    rules = await read_rules(settings)
    assert sorted(rules) == ["no-sidecar"]
    assert rules["no-sidecar"]["reason"] == "changed"
    assert rules["no-sidecar"]["image"] == "quay.io/acme/sidecar:*"
