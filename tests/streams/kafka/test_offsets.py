"""Reading partitions to their end, against the real embedded broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.broker import EmbeddedBroker
from streams.kafka.offsets import read_to_end, topic_partitions
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS
from tests.support import produce


@pytest.fixture
async def consumer(broker: EmbeddedBroker) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def test_reads_to_the_end_seen_at_the_start_and_leaves_later_records_to_read_on(
    broker: EmbeddedBroker, prefix: str, consumer: AIOKafkaConsumer
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS])
    topic = DEPLOYMENTS.address(prefix)
    keys = [f"argocd/app-{i % 5}".encode() for i in range(200)]
    # batched: several records per batch (the embedded broker's reported end is the last
    # batch's base offset + 1, which read_to_end must not stop at)
    await produce(
        broker.bootstrap, topic, [(k, b"%d" % i) for i, k in enumerate(keys)], batched=True
    )
    tps = await topic_partitions(consumer, topic)
    consumer.assign(tps)

    read: list[tuple[int, int, bytes]] = []
    async for records in read_to_end(consumer, tps, max_records=7):
        assert len({(r.topic, r.partition) for r in records}) == 1
        assert [r.offset for r in records] == sorted(r.offset for r in records)
        if not read:  # written while reading: not part of this read
            await produce(broker.bootstrap, topic, [(k, b"later") for k in keys[:5]])
        read += [(r.partition, r.offset, r.value) for r in records]

    assert sorted(int(value) for _, _, value in read) == list(range(200))
    assert len(set(read)) == 200
    later: list[bytes | None] = []
    for _ in range(30):  # the next read starts where this one ended
        fetched = await consumer.getmany(*tps, timeout_ms=1000)
        later += [r.value for records in fetched.values() for r in records]
        if len(later) >= 5:
            break
    assert later == [b"later"] * 5


async def test_a_partition_that_cannot_be_read_to_its_end_in_time_raises_timeout(
    broker: EmbeddedBroker, prefix: str, consumer: AIOKafkaConsumer
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS])
    tp = TopicPartition(DEPLOYMENTS.address(prefix), 0)
    consumer.assign([tp])
    with pytest.raises(TimeoutError, match=f"could not read {tp.topic} to its end in 0.5s"):
        async for _ in read_to_end(consumer, [tp], ends={tp: 10}, timeout_s=0.5, fetch_ms=100):
            pass


async def test_partitions_at_their_end_already_yield_nothing(
    broker: EmbeddedBroker, prefix: str, consumer: AIOKafkaConsumer
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS])
    tps = await topic_partitions(consumer, DEPLOYMENTS.address(prefix))
    consumer.assign(tps)
    assert [records async for records in read_to_end(consumer, tps, timeout_s=5)] == []
