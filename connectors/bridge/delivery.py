"""Getting accepted records to Kafka, or into the spool, in per-app order.

One :class:`Dispatcher` per bridge owns the Kafka producer (acks=all; idempotent where the
broker supports it, see ``SYNCTRAIL_KAFKA_IDEMPOTENCE``), the spool and a maintenance task. A record goes straight to Kafka
while the broker is up and its app has nothing spooled; otherwise it is appended to the spool
behind the app's earlier records. The maintenance task

* fails produces that take too long: after ``probe_after`` it probes the brokers over TCP (an
  aiokafka producer facing a dead broker waits for its whole request timeout) and, if none
  answers, marks the broker down so that this and every following record is spooled at once;
* while the broker is down, tries every ``drain_interval`` to connect a fresh producer; the
  sync-events topic is created at the first connection, and re-created when it went missing
  only on the embedded broker (it forgets topics when it restarts). On any other broker a
  topic that vanished is an operator's error: the bridge logs it, spools, and waits for the
  topic to be created again (``synctrail topics create``);
* while it is up, checks that the topic still exists and drains the spool in order.

Idempotence does not make the spool exactly-once: a record whose produce timed out is spooled,
and the abandoned producer's request may still be appended (a killed leader's followers have
it, a stalled broker wakes up); the drain, on a new producer with a new producer id, would
append it a second time. The :class:`~connectors.bridge.fence.Fence` reads back the
partitions in doubt before draining and skips what is there already.

Per-app order: each delivery of an app waits for the previous one of the same app to settle
(acknowledged or spooled) before it may be spooled, and is only sent directly when the previous
one was sent directly too (the producer keeps one partition's records in order). If an earlier
record of an app ended up in the spool after a later one reached Kafka, the later one is spooled
again behind it, so the app's last record on the topic is always its latest delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connectors.bridge.fence import Fence
from connectors.bridge.metrics import BridgeMetrics
from connectors.bridge.settings import BridgeSettings
from connectors.bridge.spool import Spool, SpoolError
from streams.domain import cloudevents, records
from streams.kafka.aiokafka_fixes import abort_sender
from streams.kafka.client import client_args, parse_bootstrap
from streams.kafka.features import BrokerFeatures, probe, use_idempotence
from streams.kafka.produce import BatchFailed, BatchingProducer, Headers
from streams.kafka.setup import ensure_topics_for
from streams.kafka.topics import SYNC_EVENTS

log = logging.getLogger(__name__)

PUBLISHED = "published"
SPOOLED = "spooled"
FAILED = "failed"


class ProduceFailed(Exception):
    """Kafka did not acknowledge a record in time (or refused it)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a delivery went: a Kafka offset, or the spool."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    spooled: bool = False


@dataclass(slots=True)
class _Settle:
    """The latest not-yet-settled delivery of one app.

    A future is made only for a later delivery that has to wait: mostly none does.
    """

    direct: bool = False
    result: str | None = None
    waiters: list[asyncio.Future[str]] | None = None

    def settle(self, result: str) -> None:
        """Record where the delivery went and wake whoever waits for it."""
        self.result = result
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(result)

    async def settled(self) -> str:
        """Where the delivery went, once it is settled."""
        if self.result is not None:
            return self.result
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        return await waiter


@dataclass(slots=True)
class _InFlight:
    started: float
    result: asyncio.Future[Any] = field(repr=False)


async def tcp_reachable(bootstrap: str, timeout: float = 0.5) -> bool:
    """True if any bootstrap server accepts a TCP connection within ``timeout``."""
    for _, host, port in parse_bootstrap(bootstrap):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


class Dispatcher:
    """Kafka producer + spool + per-app ordering + the maintenance task."""

    def __init__(self, settings: BridgeSettings, spool: Spool, metrics: BridgeMetrics) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.topic = SYNC_EVENTS.address(settings.topic_prefix)
        self.broker_up = False
        self.last_broker_error: str | None = None
        self._producer: AIOKafkaProducer | None = None
        self._tails: dict[bytes, _Settle] = {}
        self._inflight: dict[int, _InFlight] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._old_producers: set[asyncio.Task[None]] = set()
        self._last_check = 0.0
        self._last_submit = 0.0
        self._batcher: BatchingProducer | None = None
        self.features: BrokerFeatures | None = None
        self.idempotence = False
        self._topic_seen = False
        self._missing_reported = False
        self.fence = Fence()
        self.source = settings.ce_source()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect if the broker is there (never blocks for long) and start maintenance."""
        await self._connect()
        self._task = asyncio.create_task(self._maintain(), name="bridge-maintenance")

    async def stop(self) -> None:
        """Stop maintenance, flush the producer (bounded), close the spool."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        producer, self._producer = self._producer, None
        batcher, self._batcher = self._batcher, None
        if producer is not None:
            # Graceful: what the batcher holds is handed over and acknowledged, then the
            # producer flushes whatever else it has.
            if batcher is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        batcher.drain(), self.settings.bridge_produce_timeout_s + 1
                    )
            await self._close_producer(producer)
        for task in list(self._old_producers):
            with contextlib.suppress(Exception):
                await task
        self.spool.close()

    def _new_producer(self, idempotence: bool = False) -> AIOKafkaProducer:
        timeout_ms = int(self.settings.bridge_produce_timeout_s * 1000)
        return AIOKafkaProducer(
            **client_args(self.settings),
            acks="all",
            enable_idempotence=idempotence,
            linger_ms=self.settings.bridge_linger_ms,
            request_timeout_ms=timeout_ms,
            max_request_size=self.settings.bridge_max_body_bytes * 2 + 65536,
            retry_backoff_ms=100,
            max_batch_size=512 * 1024,
            client_id="synctrail-bridge",
        )

    async def _connect(self) -> bool:
        """Start a fresh producer and make sure the topic exists; True when the broker is up."""
        timeout = max(self.settings.bridge_produce_timeout_s, 1.0)
        try:
            # asked at every connection: the broker behind the address may have changed
            features = self.features = await probe(self.settings, timeout_s=timeout)
        except (KafkaError, OSError, TimeoutError, RuntimeError) as exc:
            self.last_broker_error = f"{type(exc).__name__}: {exc}"
            return False
        self.idempotence = use_idempotence(self.settings.kafka_idempotence, features)
        producer = self._new_producer(self.idempotence)
        try:
            await asyncio.wait_for(producer.start(), timeout)
            if not await self._topic_ready(producer, timeout):
                self._retire(producer)
                return False
            batcher = BatchingProducer(producer, on_ack=self._acknowledged)
            # also tracks it, so that metadata refreshes keep it when a spooled record of
            # another topic makes aiokafka track that one (it then refreshes tracked topics only)
            await asyncio.wait_for(batcher.partition_count(self.topic), timeout)
        except (KafkaError, OSError, TimeoutError, RuntimeError) as exc:
            self.last_broker_error = f"{type(exc).__name__}: {exc}"
            self._retire(producer)
            return False
        self._producer = producer
        if self.fence.in_doubt and not await self.fence.read_back(
            self.settings, self.topic, timeout
        ):
            # the partitions in doubt cannot be read yet (no leader): no drain before
            self.last_broker_error = "reading back the partitions in doubt failed; retrying"
            self._retire(producer)
            return False
        self._batcher = batcher
        self._topic_seen = True
        self._missing_reported = False
        self._set_up(True)
        log.info(
            "kafka reachable",
            extra={
                "bootstrap": self.settings.kafka_bootstrap,
                "idempotence": self.idempotence,
                "cluster_id": features.cluster_id,
            },
        )
        return True

    async def _topic_ready(self, producer: AIOKafkaProducer, timeout: float) -> bool:
        """Create the topic at the first connection (and on the embedded broker, whenever it
        went missing); otherwise only check that it is there, and report it when not."""
        if not self._topic_seen or (self.features is not None and self.features.forgets_topics):
            await asyncio.wait_for(
                ensure_topics_for(self.settings, topics=[SYNC_EVENTS]),
                timeout * 2,
            )
            return True
        cluster = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
        if self.topic in cluster.topics():
            return True
        self.last_broker_error = f"topic {self.topic} is missing"
        if not self._missing_reported:
            self._missing_reported = True
            log.error(
                "topic missing; spooling until it is created again (synctrail topics create)",
                extra={"topic": self.topic, "spool_records": self.spool.records},
            )
        return False

    def _set_up(self, up: bool) -> None:
        self.broker_up = up
        self.metrics.broker_up.set(1 if up else 0)
        if up:
            self.last_broker_error = None
            self._wake.set()

    def _acknowledged(self, topic: str, partition: int, last_offset: int) -> None:
        if topic == self.topic:
            self.fence.acknowledged(partition, last_offset)

    def mark_down(self, reason: str) -> None:
        """Spool everything from now on and fail every produce still waiting."""
        if self.broker_up:
            log.warning(
                "kafka unreachable; spooling deliveries",
                extra={"reason": reason, "spool_records": self.spool.records},
            )
        self.last_broker_error = reason
        self._set_up(False)
        producer, self._producer = self._producer, None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            self.fence.doubt(batcher.handed_over(self.topic))
            batcher.fail_all(reason)
        if producer is not None:
            self._retire(producer, batcher)
        inflight, self._inflight = self._inflight, {}
        for item in inflight.values():
            if not item.result.done():
                item.result.set_exception(ProduceFailed(reason))

    def _retire(self, producer: AIOKafkaProducer, batcher: BatchingProducer | None = None) -> None:
        """Abandon a producer that failed: its queued records were spooled already.

        A plain ``stop()`` would flush its queued batches, and they wait for the broker
        without expiring while the leader is known: a broker coming back on the same address
        would then get them a second time, out of order with the spool. So the sender is
        cancelled first and the queued batches are dropped.
        """
        task = asyncio.ensure_future(self._abort_producer(producer, batcher))
        self._old_producers.add(task)
        task.add_done_callback(self._old_producers.discard)

    async def _abort_producer(
        self, producer: AIOKafkaProducer, batcher: BatchingProducer | None
    ) -> None:
        if batcher is not None:
            await batcher.abort()
        timeout = self.settings.bridge_produce_timeout_s + 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(abort_sender(producer), timeout)
        await self._close_producer(producer)

    async def _close_producer(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), self.settings.bridge_produce_timeout_s + 1)

    # ------------------------------------------------------------------ the hot path

    def headers_of(self, key: str, delivery_id: str | None, received_at: str | None) -> Headers:
        """The CloudEvents headers of a sync-event keyed ``key``: its identity is its
        ``delivery_id``, its time ``received_at`` (:mod:`streams.domain.cloudevents`)."""
        fields = {"delivery_id": delivery_id, "received_at": received_at}
        return cloudevents.headers(records.SYNC_EVENT_V1, fields, key, self.source)

    def headers_of_value(self, key: bytes, value: bytes) -> Headers:
        """The CloudEvents headers of a sync-event record from its bytes (a spooled one: the
        spool keeps key and value, so the headers are computed again, the same ones)."""
        record = records.loads_or_none(value)
        if not isinstance(record, dict):
            record = {}
        return self.headers_of(
            key.decode("utf-8", "replace"), record.get("delivery_id"), record.get("received_at")
        )

    async def deliver(self, key: bytes, value: bytes, headers: Headers | None = None) -> Outcome:
        """Publish ``value`` under ``key`` with its CloudEvents ``headers`` (computed from the
        value when not given), or spool it (key and value: a drain computes the same headers
        again); raises SpoolError when neither works."""
        if headers is None:
            headers = self.headers_of_value(key, value)
        prev = self._tails.get(key)
        me = _Settle()
        self._tails[key] = me
        result = FAILED
        try:
            if (
                self.broker_up
                and self._batcher is not None
                and not self.spool.pending(key)
                and (prev is None or prev.direct or prev.result is not None)
            ):
                me.direct = True
                started = time.monotonic()
                try:
                    partition, offset = await self._submit(self.topic, key, value, headers)
                except BatchFailed as exc:
                    me.direct = False
                    self.mark_down(str(exc))
                else:
                    self.metrics.produce_duration.observe(time.monotonic() - started)
                    if prev is not None and (prev.result or await prev.settled()) == SPOOLED:
                        # An earlier delivery of this app is now behind this one: repeat this
                        # one after it so the app's last record is its latest delivery.
                        with contextlib.suppress(SpoolError):
                            await self.spool.append(self.topic, key, value)
                    result = PUBLISHED
                    return Outcome(self.topic, partition, offset)
            if prev is not None:
                await prev.settled()
            await self.spool.append(self.topic, key, value)
            result = SPOOLED
            self._wake.set()
            return Outcome(self.topic, spooled=True)
        finally:
            me.settle(result)
            if self._tails.get(key) is me:
                del self._tails[key]

    def _submit(
        self, topic: str, key: bytes, value: bytes, headers: Headers
    ) -> asyncio.Future[Any]:
        """Queue a record; the future resolves to ``(partition, offset)`` once acknowledged."""
        self._last_submit = now = time.monotonic()
        batcher = self._batcher
        if batcher is not None and topic == self.topic:
            # The batcher tracks its records' age itself (per batch, cheaper than per record).
            return batcher.submit(topic, key, value, headers)
        if self._producer is None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(ProduceFailed("kafka unreachable"))
            return fut
        # Only spooled records of another prefix (settings changed between runs) get here.
        fut = asyncio.ensure_future(_send_one(self._producer, topic, key, value, headers))
        ident = self._next_id
        self._next_id += 1
        self._inflight[ident] = _InFlight(now, fut)
        fut.add_done_callback(lambda _f: self._inflight.pop(ident, None))
        return fut

    def _oldest_unacknowledged(self) -> float | None:
        starts = [item.started for item in self._inflight.values()]
        if self._batcher is not None:
            oldest = self._batcher.oldest_unacknowledged()
            if oldest is not None:
                starts.append(oldest)
        return min(starts, default=None)

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self) -> None:
        tick = min(0.1, self.settings.bridge_probe_after_s / 2)
        while not self._stopping:
            try:
                if self.broker_up:
                    await self._watch_inflight()
                    if self.broker_up and self.spool.records:
                        await self._drain_round()
                    if self.broker_up and not self.spool.records:
                        await self._check_topic()
                else:
                    await self._reconnect()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bridge maintenance step failed")
            self._wake.clear()
            if self.broker_up and self.spool.records:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)

    async def _watch_inflight(self) -> None:
        oldest = self._oldest_unacknowledged()
        if oldest is None:
            return
        age = time.monotonic() - oldest
        if age > self.settings.bridge_produce_timeout_s:
            self.mark_down(f"no acknowledgement in {self.settings.bridge_produce_timeout_s}s")
        elif age > self.settings.bridge_probe_after_s and not await tcp_reachable(
            self.settings.kafka_bootstrap
        ):
            self.mark_down("no broker accepts connections")

    async def _reconnect(self) -> None:
        now = time.monotonic()
        if now - self._last_check < self.settings.bridge_drain_interval_s:
            return
        self._last_check = now
        if await tcp_reachable(self.settings.kafka_bootstrap):
            await self._connect()

    async def _check_topic(self) -> None:
        # The embedded broker forgets its topics when restarted, and an operator may delete
        # it on any broker; notice it while idle. Only
        # while idle: a metadata request shares the connection with produce requests and
        # would delay them. Under load a dead broker shows up as slow produces anyway.
        now = time.monotonic()
        interval = self.settings.bridge_drain_interval_s
        if now - self._last_check < interval or now - self._last_submit < interval:
            return
        self._last_check = now
        producer = self._producer
        if producer is None:
            return
        try:
            cluster = await asyncio.wait_for(
                producer.client.fetch_all_metadata(), self.settings.bridge_produce_timeout_s
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            self.mark_down(f"metadata request failed: {type(exc).__name__}: {exc}")
            return
        if self.topic not in cluster.topics():
            if self.features is not None and self.features.forgets_topics:
                log.warning(
                    "topic missing (embedded broker restarted?); re-creating",
                    extra={"topic": self.topic},
                )
            self.mark_down("topic missing")

    async def _drain_round(self) -> None:
        batch = self.spool.peek(self.settings.bridge_drain_batch)
        if not batch:
            return
        waits = []
        skipped = 0
        for rec in batch:
            if rec.topic == self.topic and self.fence.landed(rec.key, rec.value):
                # on the topic already: its produce failed, but the broker appended it
                skipped += 1
                done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                waits.append(done)
            else:
                headers = self.headers_of_value(rec.key, rec.value)
                waits.append(self._submit(rec.topic, rec.key, rec.value, headers))
        if skipped:
            log.info(
                "spooled records found on the topic already; not sent again",
                extra={"records": skipped},
            )
        results = await asyncio.gather(*waits, return_exceptions=True)
        acked = 0
        for res in results:
            if isinstance(res, BaseException):
                break
            acked += 1
        self.spool.commit(batch[:acked])
        self.metrics.spool_drained.inc(acked)
        if acked < len(batch):
            failure = next(r for r in results if isinstance(r, BaseException))
            self.mark_down(f"draining failed: {failure}")
        elif not self.spool.records:
            self.fence.forget()
            log.info("spool drained", extra={"drained_total": self.spool.drained_total})


async def _send_one(
    producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes, headers: Headers
) -> tuple[int, int]:
    meta = await (await producer.send(topic, value, key=key, headers=headers))
    return meta.partition, meta.offset
