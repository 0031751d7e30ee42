"""The worker's output producer: a batch's records as one record batch per topic partition.

It sends the agent's outputs (keyed, put on their keys' partitions by
:meth:`OutputProducer.place`) and the ``apps`` table's changelog writes (on the partition of the
event that made them), each with :meth:`OutputProducer.hand_over`, which does not wait for the
broker, or :meth:`OutputProducer.send_placed`, which does.

``producer.send()`` costs a partitioner call, a few coroutines and a future per record, and the
worker writes four or five records per deploy. Records of one agent batch are instead grouped
by topic partition and appended to aiokafka ``BatchBuilder``s, so a batch of 500 deploys is a
few dozen ``send_batch()`` calls whose futures are awaited together.

Order: a partition's records are appended in the order given, and aiokafka sends one batch
per partition at a time, so per-app order holds on every output topic. Where the broker has
idempotent producers (``SYNCTRAIL_KAFKA_IDEMPOTENCE``), a batch retried after a lost answer is
not appended twice either. Partitioning is Kafka's
default for keyed records (murmur2 of the key), so consumers in any language agree on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streams.kafka.client import Connection, connection
from streams.kafka.topics import SOURCE_HEADER

#: ``(topic, partition, key, value, source header or None)``
Placed = tuple[str, int, bytes, bytes, bytes | None]

_PARTITION_CACHE_MAX = 100_000
_NO_HEADERS: list[tuple[str, bytes]] = []  # shared: aiokafka only reads it


def kafka_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a keyed record among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class OutputProducer:
    """Sends many keyed records at once and returns when the broker has them all."""

    def __init__(
        self,
        bootstrap: Connection,
        *,
        max_batch_bytes: int,
        client_id: str = "synctrail-worker",
        enable_idempotence: bool = False,
        transactional_id: str | None = None,
    ) -> None:
        # transactional_id: see streams.transactions (sends then need an open transaction)
        self.producer = AIOKafkaProducer(
            **connection(bootstrap),  # plaintext servers, or streams.kafka.client.client_args
            client_id=client_id,
            acks="all",
            enable_idempotence=enable_idempotence,
            max_batch_size=max_batch_bytes,
            linger_ms=0,
            transactional_id=transactional_id,
        )
        self._partition_counts: dict[str, int] = {}
        self._partition_of: dict[tuple[bytes, int], int] = {}
        self._tracked: set[str] = set()

    async def start(self) -> None:
        """Connect to the cluster."""
        await self.producer.start()

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        await self.producer.stop()

    async def _partitions(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(await self.producer.partitions_for(topic))
        return count

    async def _track(self, topic: str) -> None:
        # aiokafka refreshes metadata only for the topics its client tracks, as soon as it
        # tracks any; a topic it learnt from the start-up metadata is not tracked. Writing to a
        # topic created later (the changelog) then made every refresh forget the output topics,
        # and their queued batches failed after 40 s with NotLeaderForPartitionError.
        self._tracked.add(topic)
        await self.producer.client.add_topic(topic)

    def _partition(self, key: bytes, partitions: int) -> int:
        # apps are few and murmur2 runs in Python: remember each key's partition
        cached = self._partition_of.get((key, partitions))
        if cached is None:
            if len(self._partition_of) >= _PARTITION_CACHE_MAX:
                self._partition_of.clear()
            cached = self._partition_of[key, partitions] = kafka_partition(key, partitions)
        return cached

    async def place(
        self,
        records: Iterable[tuple[str, bytes, bytes] | tuple[str, bytes, bytes, bytes | None]],
    ) -> list[Placed]:
        """``(topic, key, value[, source])`` records as ``(topic, partition, key, value,
        source)``: each on its key's partition (``source``: see :meth:`hand_over`)."""
        placed = []
        for record in records:  # indexing, not star-unpacking: no list per record
            topic, key = record[0], record[1]
            partition = self._partition(key, await self._partitions(topic))
            source = record[3] if len(record) > 3 else None
            placed.append((topic, partition, key, record[2], source))
        return placed

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (from the producer's metadata)."""
        return await self._partitions(topic)

    async def send_placed(
        self, records: Iterable[tuple[str, int, bytes, bytes] | Placed]
    ) -> dict[tuple[str, int], int]:
        """Send ``(topic, partition, key, value[, source])`` records; once all are acknowledged, return
        the offset of the last record written to each ``(topic, partition)``.

        Raises whatever the producer raises when the broker refuses a batch.
        """
        return await (await self.hand_over(records))

    async def hand_over(
        self, records: Iterable[tuple[str, int, bytes, bytes] | Placed]
    ) -> asyncio.Future[dict[tuple[str, int], int]]:
        """Give ``(topic, partition, key, value[, source])`` records to the producer, without
        waiting for the broker; the returned future resolves to :meth:`send_placed`'s answer.
        A ``source`` (not ``None``) goes in the record's ``synctrail-source`` header
        (:mod:`streams.replay`); the value is written as given.

        Records of one partition go in one batch (or more, when full), in the order given, and
        after those of every earlier call: a caller that hands over batch after batch keeps
        their order on every partition while their acknowledgements are still outstanding.
        The future fails with whatever the producer raises when the broker refuses a batch.
        """
        grouped: dict[tuple[str, int], list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
        for record in records:  # indexing, not star-unpacking: no list per record
            source = record[4] if len(record) > 4 else None
            headers = [(SOURCE_HEADER, source)] if source is not None else _NO_HEADERS
            grouped.setdefault((record[0], record[1]), []).append((record[2], record[3], headers))
        delivered: list[tuple[tuple[str, int], int, asyncio.Future[Any]]] = []
        for tp, items in grouped.items():
            if tp[0] not in self._tracked:  # every topic before its first batch
                await self._track(tp[0])
            batch, size = self.producer.create_batch(), 0
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # full: send it and start another (a record always fits an empty batch)
                    sent = await self.producer.send_batch(batch, tp[0], partition=tp[1])
                    delivered.append((tp, size, sent))
                    batch, size = self.producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
                size += 1
            delivered.append(
                (tp, size, await self.producer.send_batch(batch, tp[0], partition=tp[1]))
            )
        return asyncio.ensure_future(_last_offsets(delivered))


async def _last_offsets(
    delivered: list[tuple[tuple[str, int], int, asyncio.Future[Any]]],
) -> dict[tuple[str, int], int]:
    metadata = await asyncio.gather(*(sent for _, _, sent in delivered))
    last: dict[tuple[str, int], int] = {}
    for (tp, size, _), meta in zip(delivered, metadata, strict=True):
        last[tp] = max(last.get(tp, -1), meta.offset + size - 1)
    return last
