"""The bridge on Apache Kafka: idempotent producer, and a vanished topic reported, not re-created.

(The embedded broker forgets topics when it restarts, and there the bridge re-creates its topic:
``test_outage.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka.setup import ensure_topics
from streams.kafka.topics import SYNC_EVENTS
from tests.apache_kafka.node import KafkaNode
from tests.connectors.bridge.helpers import AUTH, bridge_settings, envelope, running_bridge
from tests.support import read_topic, wait_for


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_deleted_topic_is_reported_and_spooled_for_not_recreated(
    apache_kafka: KafkaNode, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = apache_kafka.bootstrap
    topic = SYNC_EVENTS.address(prefix)
    settings = bridge_settings(bootstrap, prefix, tmp_path / "spool")
    async with running_bridge(settings) as (client, bridge):
        dispatcher = bridge.dispatcher
        assert dispatcher.broker_up and dispatcher.idempotence is True
        assert dispatcher.features is not None and not dispatcher.features.forgets_topics
        resp = await client.post("/v1/sync", data=envelope("app", 0), headers=AUTH)
        assert resp.status == 202 and not (await resp.json())["spooled"]

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
        await wait_for(lambda: not dispatcher.broker_up, timeout=30, what="bridge notices")
        spooled = []
        for seq in range(1, 4):
            resp = await client.post("/v1/sync", data=envelope("app", seq), headers=AUTH)
            assert resp.status == 202
            answer = await resp.json()
            assert answer["spooled"]
            spooled.append(answer["delivery_id"])
        await wait_for(
            lambda: "topic missing; spooling until it is created again" in caplog.text,
            timeout=30,
            what="the missing topic reported",
        )
        # a reconnection round found it missing and did not create it
        await wait_for(
            lambda: dispatcher.last_broker_error == f"topic {topic} is missing",
            timeout=30,
            what="a reconnection attempt that finds the topic missing",
        )
        assert topic not in await _topics(bootstrap)
        assert bridge.spool.records == 3

        # the operator creates it again: the spool drains into it
        await ensure_topics(bootstrap, prefix, settings.partitions, topics=[SYNC_EVENTS])
        await wait_for(lambda: bridge.spool.records == 0, timeout=60, what="spool drained")
    records = await read_topic(bootstrap, topic)
    assert [r.value["delivery_id"] for r in records] == spooled
