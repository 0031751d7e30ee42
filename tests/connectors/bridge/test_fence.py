"""The spool's fence finds the records a failed produce appended all the same."""

from __future__ import annotations

from connectors.bridge.fence import Fence
from connectors.broker import EmbeddedBroker, free_port
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import SYNC_EVENTS
from tests.support import produce, read_topic, wait_for


async def test_read_back_finds_what_was_appended_after_the_last_acknowledgement(
    broker: EmbeddedBroker, prefix: str
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=1, topics=[SYNC_EVENTS])
    topic = SYNC_EVENTS.address(prefix)
    acked = [(b"app", b'{"delivery_id":"a%d"}' % i) for i in range(3)]
    in_doubt = [(b"app", b'{"delivery_id":"d%d"}' % i) for i in range(4)]
    await produce(broker.bootstrap, topic, acked + in_doubt, batched=True)
    offsets = [r.offset for r in await read_topic(broker.bootstrap, topic)]

    fence = Fence()
    fence.acknowledged(0, offsets[2])  # the bridge saw the first three acknowledged
    fence.doubt([0])  # then gave up on a batch of partition 0
    assert fence.in_doubt
    assert await fence.read_back(broker.bootstrap, topic, timeout_s=10)
    assert not fence.in_doubt
    assert all(fence.landed(key, value) for key, value in in_doubt)
    assert not any(fence.landed(key, value) for key, value in acked)  # not read: acknowledged
    assert not fence.landed(b"app", b'{"delivery_id":"never-sent"}')
    fence.forget()
    assert not fence.landed(*in_doubt[0])


async def test_a_partition_never_acknowledged_is_read_over_its_tail(
    broker: EmbeddedBroker, prefix: str
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=1, topics=[SYNC_EVENTS])
    topic = SYNC_EVENTS.address(prefix)
    records = [(b"app", b'{"delivery_id":"x%d"}' % i) for i in range(5)]
    await produce(broker.bootstrap, topic, records, batched=True)
    fence = Fence()
    fence.doubt([0])
    assert await fence.read_back(broker.bootstrap, topic, timeout_s=10)
    assert all(fence.landed(key, value) for key, value in records)


async def test_a_failed_read_is_retried_then_given_up_so_the_drain_goes_ahead(
    prefix: str,
) -> None:
    fence = Fence(give_up_s=0.5)
    fence.acknowledged(0, 10)
    fence.doubt([0])
    unreachable = f"127.0.0.1:{free_port()}"
    assert not await fence.read_back(unreachable, f"{prefix}none", timeout_s=0.2)
    assert fence.in_doubt  # a passing failure: the drain waits for another try
    await wait_for(
        lambda: fence.read_back(unreachable, f"{prefix}none", timeout_s=0.2),
        timeout=10,
        what="the fence giving up",
    )
    assert not fence.in_doubt  # not retried for ever: the drain goes ahead unfenced
