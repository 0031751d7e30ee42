"""The two reaches into aiokafka's private attributes do what their callers rely on (real broker)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka.aiokafka_fixes import abort_sender, refresh_metadata
from streams.kafka.client import connection
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS
from tests.support import read_topic


async def test_a_refresh_lets_a_running_consumer_see_a_topic_created_after_it_started(
    broker, prefix
):
    consumer = AIOKafkaConsumer(**connection(broker.bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        topic = DEPLOYMENTS.address(prefix)
        await ensure_topics(broker.bootstrap, prefix, partitions=3, topics=[DEPLOYMENTS])
        assert consumer.partitions_for_topic(topic) is None  # not until its next refresh
        await refresh_metadata(consumer)
        assert consumer.partitions_for_topic(topic) == {0, 1, 2}
    finally:
        await consumer.stop()


async def test_an_aborted_producer_stops_without_sending_what_it_still_held(broker, prefix):
    await ensure_topics(broker.bootstrap, prefix, partitions=1, topics=[DEPLOYMENTS])
    topic = DEPLOYMENTS.address(prefix)
    producer = AIOKafkaProducer(**connection(broker.bootstrap))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"n": 1}')
        await abort_sender(producer)
        held = await producer.send(topic, b'{"n": 2}')  # queued; nothing sends it any more
    finally:
        # stop() would wait for the queued batch to be delivered; aborted, it returns at once
        await asyncio.wait_for(producer.stop(), 30)
    assert not held.done() or held.exception() is not None
    assert [record.value for record in await read_topic(broker.bootstrap, topic)] == [{"n": 1}]
