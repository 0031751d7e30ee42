"""The bridge's Kafka producer, behind one small interface the Dispatcher composes.

:class:`LocalProducer` is an aiokafka producer (acks=all, no idempotence: the embedded broker
has none) with a :class:`~connectors.bridge.batcher.Batcher` for the sync-events topic. It runs
in whichever event loop owns it: the bridge's own (``SYNCTRAIL_BRIDGE_PRODUCER=inline``) or
the producer process's (``process``, :mod:`connectors.bridge.producer_process`), which offers
the same interface to the bridge over a socket.

Lifecycle: :meth:`connect` starts a fresh aiokafka producer (and makes sure the topic exists),
:meth:`retire` abandons it at once when the broker is lost, :meth:`close` flushes it on a
graceful stop. Between :meth:`retire` and the next :meth:`connect`, every submit fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connectors.bridge.batcher import Batcher, BatchFailed
from connectors.broker import ensure_topics
from streams.topics import SYNC_EVENTS

log = logging.getLogger(__name__)


class ProducerUnavailable(Exception):
    """The producer could not connect or answer (the message names the reason)."""


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """What a producer needs to know: plain values, so that it can cross a process boundary."""

    bootstrap: str
    topic_prefix: str
    partitions: int
    replication_factor: int
    produce_timeout_s: float
    linger_ms: int
    max_request_bytes: int

    @property
    def topic(self) -> str:
        """The sync-events topic under this prefix."""
        return SYNC_EVENTS.address(self.topic_prefix)


class Producer(Protocol):
    """What the Dispatcher needs from a producer, wherever it runs."""

    def submit(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """Queue a record; the future resolves to ``(partition, offset)`` once acknowledged.

        It fails with :class:`BatchFailed` if the record was refused or the producer retired.
        """
        ...

    def oldest_unacknowledged(self) -> float | None:
        """``time.monotonic()`` at which the oldest record still waiting was submitted."""
        ...

    async def connect(self) -> None:
        """Start a fresh producer; raise :class:`ProducerUnavailable` if Kafka is not there."""
        ...

    async def topic_exists(self) -> bool:
        """Whether the broker still has the topic; raise :class:`ProducerUnavailable` if it
        cannot tell."""
        ...

    def retire(self, reason: str) -> None:
        """Fail every record not yet acknowledged and abandon the producer (no flush)."""
        ...

    async def close(self) -> None:
        """Hand over and await what was submitted (bounded), then stop for good."""
        ...


class LocalProducer:
    """An aiokafka producer and its Batcher in the running event loop."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.topic = config.topic
        self.kafka: AIOKafkaProducer | None = None
        self._batcher: Batcher | None = None
        self._inflight: dict[int, tuple[float, asyncio.Future[Any]]] = {}
        self._next_id = 0
        self._old: set[asyncio.Task[None]] = set()

    def _new_kafka_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=self.config.linger_ms,
            request_timeout_ms=int(self.config.produce_timeout_s * 1000),
            max_request_size=self.config.max_request_bytes,
            retry_backoff_ms=100,
            max_batch_size=512 * 1024,
            client_id="synctrail-bridge",
        )

    async def connect(self) -> None:
        """Start a fresh aiokafka producer and make sure the sync-events topic exists."""
        if self.kafka is not None:
            self.retire("reconnecting")
        timeout = max(self.config.produce_timeout_s, 1.0)
        producer = self._new_kafka_producer()
        try:
            await asyncio.wait_for(producer.start(), timeout)
            await asyncio.wait_for(
                ensure_topics(
                    self.config.bootstrap,
                    self.config.topic_prefix,
                    self.config.partitions,
                    self.config.replication_factor,
                    topics=[SYNC_EVENTS],
                ),
                timeout * 2,
            )
            # Tracked, so that metadata refreshes keep it when a spooled record of another
            # topic makes aiokafka track that one (it then refreshes tracked topics only).
            await asyncio.wait_for(producer.client.add_topic(self.topic), timeout)
            partitions = await asyncio.wait_for(producer.partitions_for(self.topic), timeout)
        except (KafkaError, OSError, TimeoutError, RuntimeError) as exc:
            self._abandon(producer, None)
            raise ProducerUnavailable(f"{type(exc).__name__}: {exc}") from None
        self.kafka = producer
        self._batcher = Batcher(producer, self.topic, sorted(partitions))

    def submit(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """Queue a record; see :meth:`Producer.submit`."""
        batcher = self._batcher
        if batcher is not None and topic == batcher.topic:
            # The batcher tracks its records' age itself (per batch, cheaper than per record).
            return batcher.submit(key, value)
        loop = asyncio.get_running_loop()
        if self.kafka is None:
            fut: asyncio.Future[tuple[int, int]] = loop.create_future()
            fut.set_exception(BatchFailed("kafka unreachable"))
            return fut
        # Only spooled records of another prefix (settings changed between runs) get here.
        fut = asyncio.ensure_future(_send_one(self.kafka, topic, key, value))
        ident = self._next_id
        self._next_id += 1
        self._inflight[ident] = (time.monotonic(), fut)
        fut.add_done_callback(lambda _f: self._inflight.pop(ident, None))
        return fut

    def oldest_unacknowledged(self) -> float | None:
        """See :meth:`Producer.oldest_unacknowledged`."""
        starts = [started for started, _ in self._inflight.values()]
        if self._batcher is not None:
            oldest = self._batcher.oldest_unacknowledged()
            if oldest is not None:
                starts.append(oldest)
        return min(starts, default=None)

    async def topic_exists(self) -> bool:
        """See :meth:`Producer.topic_exists`."""
        if self.kafka is None:
            raise ProducerUnavailable("no producer")
        try:
            cluster = await asyncio.wait_for(
                self.kafka.client.fetch_all_metadata(), self.config.produce_timeout_s
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise ProducerUnavailable(
                f"metadata request failed: {type(exc).__name__}: {exc}"
            ) from None
        return self.topic in cluster.topics()

    def retire(self, reason: str) -> None:
        """See :meth:`Producer.retire`."""
        producer, self.kafka = self.kafka, None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.fail_all(reason)
        inflight, self._inflight = self._inflight, {}
        for _, fut in inflight.values():
            if not fut.done():
                fut.cancel()
        if producer is not None:
            self._abandon(producer, batcher)

    def _abandon(self, producer: AIOKafkaProducer, batcher: Batcher | None) -> None:
        """Stop a producer in the background without flushing it.

        A plain ``stop()`` would flush its queued batches, and they wait for the broker
        without expiring while the leader is known: a broker coming back on the same address
        would then get them a second time, out of order with the spool. So the sender is
        cancelled first and the queued batches are dropped.
        """
        task = asyncio.ensure_future(self._abort(producer, batcher))
        self._old.add(task)
        task.add_done_callback(self._old.discard)

    async def _abort(self, producer: AIOKafkaProducer, batcher: Batcher | None) -> None:
        if batcher is not None:
            await batcher.abort()
        timeout = self.config.produce_timeout_s + 1
        sender = getattr(producer, "_sender", None)
        with contextlib.suppress(Exception):
            if sender is not None:
                await asyncio.wait_for(sender.close(), timeout)
        await self._stop(producer)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), self.config.produce_timeout_s + 1)

    async def close(self) -> None:
        """See :meth:`Producer.close`."""
        producer, self.kafka = self.kafka, None
        batcher, self._batcher = self._batcher, None
        if producer is not None:
            # Graceful: what the batcher holds is handed over and acknowledged, then the
            # producer flushes whatever else it has.
            if batcher is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batcher.drain(), self.config.produce_timeout_s + 1)
            await self._stop(producer)
        for task in list(self._old):
            with contextlib.suppress(Exception):
                await task


async def _send_one(
    producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes
) -> tuple[int, int]:
    try:
        meta = await (await producer.send(topic, value, key=key))
    except KafkaError as exc:
        raise BatchFailed(f"{type(exc).__name__}: {exc}") from None
    return meta.partition, meta.offset
