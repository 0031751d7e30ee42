"""Record batching in front of one aiokafka producer (the bridge's hot path).

``producer.send()`` costs a few coroutines, a partitioner call and a future per record. The
bridge instead appends each record to an open :class:`~aiokafka.producer.message_accumulator.
BatchBuilder` for its partition, and one flusher per partition hands a batch to
``producer.send_batch()`` and waits for the broker to acknowledge it before handing over the
next one. While a batch is in flight, records gather in the open batch, so batches grow with
the load and no linger delay is needed. Handing over the next batch before the ack would not
send it any sooner (aiokafka keeps one request in flight per broker) but would close it early:
records would then wait for two round trips in three smaller batches instead of one in two,
and every produce request costs the event loop far more than appending a record.

Order: a partition's records are appended, batched and sent strictly in submission order (one
flusher per partition, one batch of a partition in flight at a time).

Partitioning is Kafka's default for keyed records (murmur2 of the key), so every producer and
consumer agrees on where an app's records live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.kafka.produce import kafka_partition

_PARTITION_CACHE_MAX = 100_000


class BatchFailed(Exception):
    """A batch was not acknowledged (or was abandoned with its producer)."""


@dataclass(slots=True)
class _Batch:
    builder: BatchBuilder
    started: float  # time.monotonic() when its first record was submitted
    waiters: list[asyncio.Future[tuple[int, int]]] = field(default_factory=list)


class Batcher:
    """Per-partition batches for one topic on one producer; create it in the running loop."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partitions: list[int],
        on_ack: Callable[[int, int], None] | None = None,
    ) -> None:
        # Kept rather than looked up per record: asyncio.get_running_loop() makes a getpid()
        # system call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self.producer = producer
        self.topic = topic
        self._partitions = sorted(partitions)
        self._cache: dict[bytes, int] = {}
        self._open: dict[int, _Batch] = {}
        self._closed: dict[int, deque[_Batch]] = {}
        self._sending: dict[int, _Batch] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._failed: BatchFailed | None = None
        self._on_ack = on_ack  # (partition, last offset) of every acknowledged batch

    def partition_for(self, key: bytes) -> int:
        """The partition ``key`` goes to (cached: apps are few, murmur2 in Python is not free)."""
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= _PARTITION_CACHE_MAX:
                self._cache.clear()
            idx = kafka_partition(key, len(self._partitions))
            partition = self._cache[key] = self._partitions[idx]
        return partition

    def submit(self, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """Queue a record; the future resolves to ``(partition, offset)`` once acknowledged.

        It fails with :class:`BatchFailed` if the broker refuses the batch or the batcher is
        failed (:meth:`fail_all`) first.
        """
        fut: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        if self._failed is not None:
            fut.set_exception(self._failed)
            return fut
        partition = self.partition_for(key)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = self._new_batch()
        if batch.builder.append(timestamp=None, key=key, value=value, headers=[]) is None:
            # Full: close it and start another (the first record always fits an empty batch).
            self._closed.setdefault(partition, deque()).append(self._open.pop(partition))
            batch = self._open[partition] = self._new_batch()
            batch.builder.append(timestamp=None, key=key, value=value, headers=[])
        batch.waiters.append(fut)
        if partition not in self._flushers:
            self._flushers[partition] = self._loop.create_task(self._flush(partition))
        return fut

    def _new_batch(self) -> _Batch:
        return _Batch(self.producer.create_batch(), time.monotonic())

    def oldest_unacknowledged(self) -> float | None:
        """``time.monotonic()`` at which the oldest record still waiting was submitted."""
        starts = [batch.started for batch in self._sending.values()]
        starts += [queue[0].started for queue in self._closed.values() if queue]
        starts += [batch.started for batch in self._open.values()]
        return min(starts, default=None)

    def handed_over(self) -> list[int]:
        """Partitions with a batch in the producer's hands, not yet acknowledged: the broker
        may append it even if it is failed here."""
        return sorted(self._sending)

    def _next_batch(self, partition: int) -> _Batch | None:
        if self._failed is not None:
            return None
        closed = self._closed.get(partition)
        if closed:
            return closed.popleft()
        return self._open.pop(partition, None)

    async def _flush(self, partition: int) -> None:
        try:
            while (batch := self._next_batch(partition)) is not None:
                self._sending[partition] = batch
                try:
                    done = await self.producer.send_batch(
                        batch.builder, self.topic, partition=partition
                    )
                    base = (await done).offset
                except asyncio.CancelledError:
                    _fail(batch.waiters, BatchFailed("producer retired"))
                    raise
                except Exception as exc:
                    _fail(batch.waiters, BatchFailed(f"{type(exc).__name__}: {exc}"))
                else:
                    if self._on_ack is not None:
                        self._on_ack(partition, base + len(batch.waiters) - 1)
                    for i, fut in enumerate(batch.waiters):
                        if not fut.done():
                            fut.set_result((partition, base + i))
                finally:
                    del self._sending[partition]
        except asyncio.CancelledError:
            self._fail_partition(partition, BatchFailed("producer retired"))
            raise
        finally:
            if self._flushers.get(partition) is asyncio.current_task():
                del self._flushers[partition]

    def _fail_partition(self, partition: int, exc: BatchFailed) -> None:
        for batch in (
            self._sending.get(partition),
            *self._closed.pop(partition, ()),
            self._open.pop(partition, None),
        ):
            if batch is not None:
                _fail(batch.waiters, exc)

    def fail_all(self, reason: str) -> None:
        """Fail every record not yet acknowledged, at once, and every later submit.

        Nothing more is handed to the producer afterwards; :meth:`abort` stops the flushers.
        """
        if self._failed is None:
            self._failed = BatchFailed(reason)
        for partition in {*self._sending, *self._closed, *self._open}:
            self._fail_partition(partition, self._failed)

    async def drain(self) -> None:
        """Return once every record submitted so far was acknowledged or failed."""
        while pending := [task for task in self._flushers.values() if not task.done()]:
            await asyncio.wait(pending)

    async def abort(self) -> None:
        """Fail everything not yet acknowledged and stop the flushers."""
        self.fail_all("producer retired")
        tasks = list(self._flushers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _fail(waiters: list[asyncio.Future[Any]], exc: Exception) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_exception(exc)
