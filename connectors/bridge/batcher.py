"""Record batching in front of one aiokafka producer (the bridge's hot path).

``producer.send()`` costs a few coroutines, a partitioner call and a future per record. The
bridge instead appends each record to an open :class:`~aiokafka.producer.message_accumulator.
BatchBuilder` for its partition, and one flusher per partition hands closed batches to
``producer.send_batch()``. While the producer has a request in flight, records gather in the
open batch, so batches grow with the load and no linger delay is needed.

Order: a partition's records are appended, batched and sent strictly in submission order (one
flusher per partition, and aiokafka keeps one request in flight per partition).

Partitioning is Kafka's default for keyed records (murmur2 of the key), so every producer and
consumer agrees on where an app's records live.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

_PARTITION_CACHE_MAX = 100_000


class BatchFailed(Exception):
    """A batch was not acknowledged (or was abandoned with its producer)."""


@dataclass(slots=True)
class _Batch:
    builder: BatchBuilder
    waiters: list[asyncio.Future[tuple[int, int]]] = field(default_factory=list)


def kafka_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Batcher:
    """Per-partition batches for one topic on one producer."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> None:
        self.producer = producer
        self.topic = topic
        self._partitions = sorted(partitions)
        self._cache: dict[bytes, int] = {}
        self._open: dict[int, _Batch] = {}
        self._closed: dict[int, deque[_Batch]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._aborted = False

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
        """Queue a record; the future resolves to ``(partition, offset)`` once acknowledged."""
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        if self._aborted:
            fut.set_exception(BatchFailed("producer retired"))
            return fut
        partition = self.partition_for(key)
        batch = self._open.get(partition)
        if batch is None:
            batch = self._open[partition] = _Batch(self.producer.create_batch())
        if batch.builder.append(timestamp=None, key=key, value=value, headers=[]) is None:
            # Full: close it and start another (the first record always fits an empty batch).
            self._closed.setdefault(partition, deque()).append(self._open.pop(partition))
            batch = self._open[partition] = _Batch(self.producer.create_batch())
            batch.builder.append(timestamp=None, key=key, value=value, headers=[])
        batch.waiters.append(fut)
        if partition not in self._flushers:
            self._flushers[partition] = asyncio.create_task(self._flush(partition))
        return fut

    def _next_batch(self, partition: int) -> _Batch | None:
        closed = self._closed.get(partition)
        if closed:
            return closed.popleft()
        return self._open.pop(partition, None)

    async def _flush(self, partition: int) -> None:
        try:
            while (batch := self._next_batch(partition)) is not None:
                try:
                    # Waits while an earlier batch of this partition is still queued.
                    done = await self.producer.send_batch(
                        batch.builder, self.topic, partition=partition
                    )
                except Exception as exc:
                    _fail(batch.waiters, BatchFailed(f"{type(exc).__name__}: {exc}"))
                    continue
                done.add_done_callback(lambda f, w=batch.waiters, p=partition: _resolve(f, w, p))
        except asyncio.CancelledError:
            for batch in [*self._closed.pop(partition, ()), self._open.pop(partition, None)]:
                if batch is not None:
                    _fail(batch.waiters, BatchFailed("producer retired"))
            raise
        finally:
            if self._flushers.get(partition) is asyncio.current_task():
                del self._flushers[partition]

    async def abort(self) -> None:
        """Fail everything not yet handed to the producer and stop the flushers."""
        self._aborted = True
        tasks = list(self._flushers.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for partition in list(self._open):
            _fail(self._open.pop(partition).waiters, BatchFailed("producer retired"))
        for partition in list(self._closed):
            for batch in self._closed.pop(partition):
                _fail(batch.waiters, BatchFailed("producer retired"))


def _fail(waiters: list[asyncio.Future[Any]], exc: Exception) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_exception(exc)


def _resolve(done: asyncio.Future[Any], waiters: list[asyncio.Future[Any]], partition: int) -> None:
    if done.cancelled():
        _fail(waiters, BatchFailed("batch cancelled"))
        return
    exc = done.exception()
    if exc is not None:
        _fail(waiters, BatchFailed(f"{type(exc).__name__}: {exc}"))
        return
    base = done.result().offset
    for i, fut in enumerate(waiters):
        if not fut.done():
            fut.set_result((partition, base + i))
