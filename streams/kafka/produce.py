"""Producing in record batches: one per topic partition, in front of one aiokafka producer.

``producer.send()`` costs a partitioner call, a few coroutines and a future per record. Both
writers on a hot path, the bridge and the worker, instead append records to an open aiokafka
``BatchBuilder`` per topic partition (a *lane*) and hand whole batches to
``producer.send_batch()``. :class:`BatchingProducer` holds the lanes, places keyed records on
Kafka's default partition (murmur2 of the key, so consumers in any language agree), turns a
batch's acknowledgement into each record's offset and reports it (``on_ack``), and fails what
the broker refused. Records reach it in one of two ways:

* :meth:`BatchingProducer.submit`, one record at a time (the bridge): one flusher task per lane
  hands over a batch and waits for its acknowledgement before handing over the next. While a
  batch is in flight, records gather in the open batch, so batches grow with the load and no
  linger delay is needed. Handing over the next batch before the ack would not send it any
  sooner (aiokafka keeps one request in flight per broker) but would close it early: records
  would then wait for two round trips in three smaller batches instead of one in two, and
  every produce request costs the event loop far more than appending a record.
* :meth:`BatchingProducer.hand_over`, many records at once (the worker's agent batch, a few
  dozen ``send_batch()`` calls for 500 deploys): every record is in the producer's hands when
  it returns (a transaction's commit then sends them), and the returned future resolves once
  all are acknowledged.

A lane is fed one way or the other, never both. Order: a lane's records are appended, batched
and sent in the order given, and after those given earlier, also while their
acknowledgements are outstanding. Where the broker has idempotent producers
(``SYNCTRAIL_KAFKA_IDEMPOTENCE``), a batch retried after a lost answer is not appended twice.

:class:`OutputProducer` is the worker's: it makes its own aiokafka producer and puts each
record's source in the ``synctrail-source`` header (:mod:`streams.replay`), after the record's
CloudEvents headers (:mod:`streams.domain.cloudevents`, computed by the caller while the record
is still a dict).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from streams.kafka.client import Connection, connection
from streams.kafka.topics import SOURCE_HEADER

Headers = list[tuple[str, bytes]]
#: ``(topic, partition, key, value[, header value or None[, headers]])``: a record on its
#: partition; ``headers`` (CloudEvents', :mod:`streams.domain.cloudevents`) go first
Placed = (
    tuple[str, int, bytes, bytes]
    | tuple[str, int, bytes, bytes, bytes | None]
    | tuple[str, int, bytes, bytes, bytes | None, Headers | None]
)
#: ``(topic, key, value[, source[, headers]])``: a record for :meth:`OutputProducer.place`
Unplaced = (
    tuple[str, bytes, bytes]
    | tuple[str, bytes, bytes, bytes | None]
    | tuple[str, bytes, bytes, bytes | None, Headers | None]
)

_PARTITION_CACHE_MAX = 100_000
_NO_HEADERS: Headers = []  # shared: aiokafka only reads it


def kafka_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a keyed record among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BatchFailed(Exception):
    """A submitted record's batch was not acknowledged (or was abandoned with its producer)."""


@dataclass(slots=True)
class _Batch:
    builder: BatchBuilder
    started: float  # time.monotonic() when its first record was appended
    size: int = 0
    #: one per record, in order, for records given to submit(); None for hand_over()'s
    waiters: list[asyncio.Future[tuple[int, int]]] | None = None


class _Lane:
    """One topic partition's batches: closed ones waiting, the open one, the one in flight."""

    __slots__ = ("closed", "flusher", "open", "partition", "sending", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: _Batch | None = None
        self.closed: deque[_Batch] = deque()
        self.sending: _Batch | None = None  # submit()'s batch in the producer's hands
        self.flusher: asyncio.Task[None] | None = None


class _Topic:
    """A topic whose partition count is known: its lanes by partition, its keys' partitions."""

    __slots__ = ("lanes", "partition_of")

    def __init__(self, lanes: list[_Lane]) -> None:
        self.lanes = lanes
        # apps are few and murmur2 runs in Python: each key's partition is remembered
        self.partition_of: dict[bytes, int] = {}

    def place(self, key: bytes) -> int:
        """The partition of ``key`` (look in ``partition_of`` first: this computes it)."""
        if len(self.partition_of) >= _PARTITION_CACHE_MAX:
            self.partition_of.clear()
        partition = self.partition_of[key] = kafka_partition(key, len(self.lanes))
        return partition


class BatchingProducer:
    """Record batches per topic partition on one aiokafka producer; create it in the running
    loop. ``on_ack(topic, partition, last offset)`` runs for every acknowledged batch;
    ``header`` names the header a handed-over record's fifth element goes in (callers that
    give none need no name)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        on_ack: Callable[[str, int, int], None] | None = None,
        header: str = "",
    ) -> None:
        # Kept rather than looked up per record: asyncio.get_running_loop() makes a getpid()
        # system call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self.producer = producer
        self._on_ack = on_ack
        self._header = header
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._topics: dict[str, _Topic] = {}
        self._tracked: set[str] = set()
        self._failed: BatchFailed | None = None

    # ------------------------------------------------------------------ placing

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (from the producer's metadata, then cached)."""
        return len((await self._topic(topic)).lanes)

    async def _topic(self, topic: str) -> _Topic:
        known = self._topics.get(topic)
        if known is None:
            await self._track(topic)
            count = len(await self.producer.partitions_for(topic))
            known = self._topics[topic] = _Topic([self._lane(topic, p) for p in range(count)])
        return known

    async def _track(self, topic: str) -> None:
        # aiokafka refreshes metadata only for the topics its client tracks, as soon as it
        # tracks any; a topic it learnt from the start-up metadata is not tracked. Writing to a
        # topic created later (the changelog) then made every refresh forget the output topics,
        # and their queued batches failed after 40 s with NotLeaderForPartitionError.
        if topic not in self._tracked:
            self._tracked.add(topic)
            await self.producer.client.add_topic(topic)

    # ------------------------------------------------------------------ appending

    def _lane(self, topic: str, partition: int) -> _Lane:
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[topic, partition] = _Lane(topic, partition)
        return lane

    def _append(self, lane: _Lane, key: bytes, value: bytes, headers: Headers) -> _Batch:
        """Append a record to the lane's open batch (a full one is closed for another)."""
        batch = lane.open
        if batch is not None:
            if (
                batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
                is not None
            ):
                batch.size += 1
                return batch
            lane.closed.append(batch)
        batch = lane.open = _Batch(self.producer.create_batch(), time.monotonic())
        batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        batch.size = 1  # a record always fits an empty batch
        return batch

    def _next_batch(self, lane: _Lane) -> _Batch | None:
        if self._failed is not None:
            return None
        if lane.closed:
            return lane.closed.popleft()
        batch, lane.open = lane.open, None
        return batch

    def _acknowledged(self, lane: _Lane, batch: _Batch, base: int) -> int:
        """Report an acknowledged batch and resolve its records; its last offset."""
        last = base + batch.size - 1
        if self._on_ack is not None:
            self._on_ack(lane.topic, lane.partition, last)
        if batch.waiters is not None:
            partition = lane.partition
            for i, fut in enumerate(batch.waiters):
                if not fut.done():
                    fut.set_result((partition, base + i))
        return last

    # ------------------------------------------------------------------ one record at a time

    def submit(
        self, topic: str, key: bytes, value: bytes, headers: Headers = _NO_HEADERS
    ) -> asyncio.Future[tuple[int, int]]:
        """Queue a record (with ``headers``) on its key's partition of ``topic`` (whose
        :meth:`partition_count` was asked before); the future resolves to ``(partition,
        offset)`` once acknowledged.

        It fails with :class:`BatchFailed` if the broker refuses the batch or everything was
        failed (:meth:`fail_all`) first.
        """
        fut: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        if self._failed is not None:
            fut.set_exception(self._failed)
            return fut
        known = self._topics[topic]
        partition = known.partition_of.get(key)
        if partition is None:
            partition = known.place(key)
        lane = known.lanes[partition]
        batch = self._append(lane, key, value, headers)
        if batch.waiters is None:
            batch.waiters = [fut]
        else:
            batch.waiters.append(fut)
        if lane.flusher is None:
            lane.flusher = self._loop.create_task(self._flush(lane))
        return fut

    async def _flush(self, lane: _Lane) -> None:
        try:  # the topic is tracked: submit() needs its partition_count()
            while (batch := self._next_batch(lane)) is not None:
                lane.sending = batch
                try:
                    done = await self.producer.send_batch(
                        batch.builder, lane.topic, partition=lane.partition
                    )
                    base = (await done).offset
                except asyncio.CancelledError:
                    _fail(batch.waiters, BatchFailed("producer retired"))
                    raise
                except Exception as exc:
                    _fail(batch.waiters, BatchFailed(f"{type(exc).__name__}: {exc}"))
                else:
                    self._acknowledged(lane, batch, base)
                finally:
                    lane.sending = None
        except asyncio.CancelledError:
            self._fail_lane(lane, BatchFailed("producer retired"))
            raise
        finally:
            if lane.flusher is asyncio.current_task():
                lane.flusher = None

    def oldest_unacknowledged(self) -> float | None:
        """``time.monotonic()`` at which the oldest submitted record still waiting was
        submitted."""
        starts = []
        for lane in self._lanes.values():
            if lane.sending is not None:
                starts.append(lane.sending.started)
            elif lane.closed:
                starts.append(lane.closed[0].started)
            elif lane.open is not None and lane.open.waiters:
                starts.append(lane.open.started)
        return min(starts, default=None)

    def handed_over(self, topic: str) -> list[int]:
        """Partitions of ``topic`` with a submitted batch in the producer's hands, not yet
        acknowledged: the broker may append it even if it is failed here."""
        return sorted(
            lane.partition
            for lane in self._lanes.values()
            if lane.sending is not None and lane.topic == topic
        )

    def _fail_lane(self, lane: _Lane, exc: BatchFailed) -> None:
        for batch in (lane.sending, *lane.closed, lane.open):
            if batch is not None:
                _fail(batch.waiters, exc)
        lane.closed.clear()
        lane.open = None

    def fail_all(self, reason: str) -> None:
        """Fail every submitted record not yet acknowledged, at once, and every later submit.

        Nothing more is handed to the producer afterwards; :meth:`abort` stops the flushers.
        """
        if self._failed is None:
            self._failed = BatchFailed(reason)
        for lane in self._lanes.values():
            self._fail_lane(lane, self._failed)

    async def drain(self) -> None:
        """Return once every record submitted so far was acknowledged or failed."""
        while pending := [
            lane.flusher
            for lane in self._lanes.values()
            if lane.flusher and not lane.flusher.done()
        ]:
            await asyncio.wait(pending)

    async def abort(self) -> None:
        """Fail everything submitted and not yet acknowledged, and stop the flushers."""
        self.fail_all("producer retired")
        tasks = [lane.flusher for lane in self._lanes.values() if lane.flusher is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ many records at once

    async def send_placed(self, records: Iterable[Placed]) -> dict[tuple[str, int], int]:
        """Send records and return once all are acknowledged: :meth:`hand_over`'s answer.

        Raises whatever the producer raises when the broker refuses a batch.
        """
        return await (await self.hand_over(records))

    async def hand_over(
        self, records: Iterable[Placed]
    ) -> asyncio.Future[dict[tuple[str, int], int]]:
        """Give ``(topic, partition, key, value[, header value[, headers]])`` records to the
        producer, without waiting for the broker; the returned future resolves, once all are
        acknowledged, to the offset of the last record written to each ``(topic, partition)``.
        The record's ``headers`` come first, then a header value (not ``None``) in the
        record's ``header`` (see the class).

        Records of one partition go in one batch (or more, when full), in the order given, and
        after those of every earlier call: a caller that hands over batch after batch keeps
        their order on every partition while their acknowledgements are still outstanding.
        The future fails with whatever the producer raises when the broker refuses a batch.
        """
        lanes: dict[tuple[str, int], _Lane] = {}
        for record in records:  # indexing, not star-unpacking: no list per record
            tp = (record[0], record[1])
            lane = lanes.get(tp)
            if lane is None:
                lane = lanes[tp] = self._lane(*tp)
            self._append(lane, record[2], record[3], self._headers(record))
        delivered: list[tuple[_Lane, _Batch, asyncio.Future[Any]]] = []
        for lane in lanes.values():
            if lane.topic not in self._tracked:  # every topic before its first batch
                await self._track(lane.topic)
            while (batch := self._next_batch(lane)) is not None:
                sent = await self.producer.send_batch(
                    batch.builder, lane.topic, partition=lane.partition
                )
                delivered.append((lane, batch, sent))
        return asyncio.ensure_future(self._last_offsets(delivered))

    def _headers(self, record: Placed) -> Headers:
        if len(record) < 5:
            return _NO_HEADERS
        extra = record[4]
        given = record[5] if len(record) > 5 else None
        if extra is None:
            return given or _NO_HEADERS
        if given:
            return [*given, (self._header, extra)]
        return [(self._header, extra)]

    async def _last_offsets(
        self, delivered: list[tuple[_Lane, _Batch, asyncio.Future[Any]]]
    ) -> dict[tuple[str, int], int]:
        answers = await asyncio.gather(*(sent for _, _, sent in delivered), return_exceptions=True)
        last: dict[tuple[str, int], int] = {}
        failure: BaseException | None = None
        for (lane, batch, _), meta in zip(delivered, answers, strict=True):
            if isinstance(meta, BaseException):
                failure = failure or meta
                continue
            tp = (lane.topic, lane.partition)
            last[tp] = max(last.get(tp, -1), self._acknowledged(lane, batch, meta.offset))
        if failure is not None:
            raise failure
        return last


def _fail(waiters: list[asyncio.Future[Any]] | None, exc: Exception) -> None:
    for fut in waiters or ():
        if not fut.done():
            fut.set_exception(exc)


class OutputProducer(BatchingProducer):
    """The worker's: sends many keyed records at once and returns when the broker has them
    all; each may name its source (the ``synctrail-source`` header, :mod:`streams.replay`)."""

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
        super().__init__(
            AIOKafkaProducer(
                **connection(bootstrap),  # plaintext servers, or streams.kafka.client.client_args
                client_id=client_id,
                acks="all",
                enable_idempotence=enable_idempotence,
                max_batch_size=max_batch_bytes,
                linger_ms=0,
                transactional_id=transactional_id,
            ),
            header=SOURCE_HEADER,
        )

    async def start(self) -> None:
        """Connect to the cluster."""
        await self.producer.start()

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        await self.producer.stop()

    async def place(self, records: Iterable[Unplaced]) -> list[Placed]:
        """``(topic, key, value[, source[, headers]])`` records as ``(topic, partition, key,
        value, source, headers)``: each on its key's partition (``headers``, the CloudEvents
        ones, then a ``source`` in the ``synctrail-source`` header; the value is written as
        given)."""
        placed: list[Placed] = []
        topics = self._topics
        for record in records:  # indexing, not star-unpacking: no list per record
            topic, key = record[0], record[1]
            known = topics.get(topic) or await self._topic(topic)
            partition = known.partition_of.get(key)
            if partition is None:
                partition = known.place(key)
            source = record[3] if len(record) > 3 else None
            headers = record[4] if len(record) > 4 else None
            placed.append((topic, partition, key, record[2], source, headers))
        return placed
