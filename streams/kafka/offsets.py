"""End offsets that hold on every Kafka-protocol broker synctrail runs on.

The embedded Tansu broker answers ListOffsets(latest) with the base offset of a partition's last
record batch + 1, not the offset after its last record. Anything that reads "to the end" (state
rebuilds, the exporter's catch-up, replays, tools) would stop short whenever that batch held
several records. ``log_end_offsets`` reads the last batch and takes its last record's offset + 1;
on Apache Kafka that equals what ListOffsets says, so the correction is harmless there (where
the last offset is a transaction marker, the read finds nothing and the reported end holds).

``read_to_end`` is the one loop that reads partitions up to those ends (state rebuilds, the
exporter's catch-up, the fence's read-back, dead-letter replays, ``policy list``, ``tail``);
``windows_backwards`` reads back from them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams.kafka.aiokafka_fixes import refresh_metadata


async def log_end_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], *, timeout_ms: int = 2000
) -> dict[TopicPartition, int]:
    """The offset after the last record of each (assigned) partition; positions are kept."""
    tps = list(partitions)
    reported = await consumer.end_offsets(tps)
    positions = {tp: await consumer.position(tp) for tp in tps}
    ends: dict[TopicPartition, int] = {}
    try:
        for tp in tps:
            end = reported[tp]
            if end > 0:
                consumer.seek(tp, end - 1)
                deadline = time.monotonic() + timeout_ms / 1000
                # Short polls: where end - 1 is a transaction marker (never delivered) the
                # position moves past it with nothing to return, and one long poll would wait
                # its whole timeout for records that are not there.
                while time.monotonic() < deadline:
                    fetched = await consumer.getmany(tp, timeout_ms=20)
                    records = fetched.get(tp, [])
                    if records:
                        end = max(end, records[-1].offset + 1)
                        break
                    if await consumer.position(tp) >= end:
                        break
            ends[tp] = end
    finally:
        for tp, position in positions.items():
            consumer.seek(tp, position)
    return ends


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: Iterable[TopicPartition],
    *,
    ends: Mapping[TopicPartition, int] | None = None,
    timeout_s: float | None = None,
    fetch_ms: int = 500,
    max_records: int | None = None,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records of ``partitions`` (assigned) from their positions up to their ends as seen
    at the start (:func:`log_end_offsets`, or ``ends`` when given), as one list per partition
    and fetch, each in offset order. Records written later are left for whoever reads on: a
    partition read past its end is sought back to it. ``TimeoutError`` once ``timeout_s`` pass.

    A partition is done once the consumer's position reaches its end, not once a record at
    ``end - 1`` came: transaction markers and aborted records take offsets that a
    ``read_committed`` consumer steps over without returning them.
    """
    tps = list(partitions)
    if ends is None:
        ends = await log_end_offsets(consumer, tps)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
    while behind:
        if deadline is not None and time.monotonic() > deadline:
            topics = ", ".join(sorted({tp.topic for tp in behind}))
            raise TimeoutError(f"could not read {topics} to its end in {timeout_s}s")
        fetched = await consumer.getmany(*behind, timeout_ms=fetch_ms, max_records=max_records)
        for tp, records in fetched.items():
            end = ends[tp]
            if records and records[-1].offset >= end:
                consumer.seek(tp, end)  # later records: not ours to take
                records = [r for r in records if r.offset < end]
            if records:
                yield records
        behind = [tp for tp in behind if await consumer.position(tp) < ends[tp]]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, refreshing metadata once if the client does not know it yet.

    Empty when the topic does not exist; callers decide whether that is an error.
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await refresh_metadata(consumer)
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


async def windows_backwards(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    first: int,
    end: int,
    *,
    deadline: float,
    window: int,
    growth: int = 8,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """The records of ``tp`` below ``end``, read backwards in growing windows: each step
    yields the records of the next older window (``window`` offsets, then ``growth`` times
    more each step) in offset order, down to ``first``. The caller stops when it has seen
    enough; ``TimeoutError`` past ``deadline`` (a ``time.monotonic()`` value).

    A window may yield fewer records than offsets, or none: transaction markers and aborted
    records take offsets that a ``read_committed`` consumer never returns.
    """
    high = end
    while high > first:
        low = max(first, high - window)
        consumer.seek(tp, low)
        records: list[ConsumerRecord[bytes, bytes]] = []
        # the position moves past markers and aborted records too
        while await consumer.position(tp) < high:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {tp.topic}[{tp.partition}] back to {low}")
            fetched = await consumer.getmany(tp, timeout_ms=500)
            records += [r for r in fetched.get(tp, []) if r.offset < high]
        yield records
        high, window = low, window * growth
