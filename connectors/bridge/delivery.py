"""Getting accepted records to Kafka, or into the spool, in per-app order.

One :class:`Dispatcher` per bridge owns a producer (:mod:`connectors.bridge.producer`: in a
child process by default, or in the bridge's own loop), the spool and a maintenance task. A record goes straight to Kafka
while the broker is up and its app has nothing spooled; otherwise it is appended to the spool
behind the app's earlier records. The maintenance task

* fails produces that take too long: after ``probe_after`` it probes the brokers over TCP (an
  aiokafka producer facing a dead broker waits for its whole request timeout) and, if none
  answers, marks the broker down so that this and every following record is spooled at once;
* while the broker is down, tries every ``drain_interval`` to connect a fresh producer and
  re-create the sync-events topic (the embedded broker forgets topics when it restarts);
* while it is up, checks that the topic still exists and drains the spool in order.

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
from dataclasses import dataclass

from connectors.bridge.batcher import BatchFailed
from connectors.bridge.metrics import BridgeMetrics
from connectors.bridge.producer import LocalProducer, Producer, ProducerConfig, ProducerUnavailable
from connectors.bridge.producer_process import ProducerProcess
from connectors.bridge.settings import BridgeSettings
from connectors.bridge.spool import Spool, SpoolError
from streams.topics import SYNC_EVENTS

log = logging.getLogger(__name__)

PUBLISHED = "published"
SPOOLED = "spooled"
FAILED = "failed"


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


def _bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        hosts.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))
    return hosts


async def tcp_reachable(bootstrap: str, timeout: float = 0.5) -> bool:
    """True if any bootstrap server accepts a TCP connection within ``timeout``."""
    for host, port in _bootstrap_hosts(bootstrap):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


def producer_config(settings: BridgeSettings) -> ProducerConfig:
    """The producer's part of the bridge settings."""
    return ProducerConfig(
        bootstrap=settings.kafka_bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        produce_timeout_s=settings.bridge_produce_timeout_s,
        linger_ms=settings.bridge_linger_ms,
        max_request_bytes=settings.bridge_max_body_bytes * 2 + 65536,
    )


def make_producer(settings: BridgeSettings) -> Producer:
    """The producer ``SYNCTRAIL_BRIDGE_PRODUCER`` asks for; create it in the running loop."""
    config = producer_config(settings)
    if settings.bridge_producer == "inline":
        return LocalProducer(config)
    return ProducerProcess(
        config,
        event_loop=settings.bridge_event_loop,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )


class Dispatcher:
    """Producer + spool + per-app ordering + the maintenance task."""

    def __init__(self, settings: BridgeSettings, spool: Spool, metrics: BridgeMetrics) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.topic = SYNC_EVENTS.address(settings.topic_prefix)
        self.broker_up = False
        self.last_broker_error: str | None = None
        self.producer: Producer | None = None
        self._tails: dict[bytes, _Settle] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._last_check = 0.0
        self._last_submit = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect if the broker is there (never blocks for long) and start maintenance."""
        self.producer = make_producer(self.settings)
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
        if self.producer is not None:
            await self.producer.close()
        self.spool.close()

    async def _connect(self) -> bool:
        """Have the producer connect afresh; True when the broker is up."""
        assert self.producer is not None
        try:
            await self.producer.connect()
        except ProducerUnavailable as exc:
            self.last_broker_error = str(exc)
            return False
        self._set_up(True)
        log.info("kafka reachable", extra={"bootstrap": self.settings.kafka_bootstrap})
        return True

    def _set_up(self, up: bool) -> None:
        self.broker_up = up
        self.metrics.broker_up.set(1 if up else 0)
        if up:
            self.last_broker_error = None
            self._wake.set()

    def mark_down(self, reason: str) -> None:
        """Spool everything from now on and fail every produce still waiting."""
        if self.broker_up:
            log.warning(
                "kafka unreachable; spooling deliveries",
                extra={"reason": reason, "spool_records": self.spool.records},
            )
        self.last_broker_error = reason
        self._set_up(False)
        if self.producer is not None:
            self.producer.retire(reason)

    # ------------------------------------------------------------------ the hot path

    async def deliver(self, key: bytes, value: bytes) -> Outcome:
        """Publish ``value`` under ``key`` (or spool it); raises SpoolError when neither works."""
        prev = self._tails.get(key)
        me = _Settle()
        self._tails[key] = me
        result = FAILED
        try:
            if (
                self.broker_up
                and not self.spool.pending(key)
                and (prev is None or prev.direct or prev.result is not None)
            ):
                me.direct = True
                started = time.monotonic()
                try:
                    partition, offset = await self._submit(self.topic, key, value)
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

    def _submit(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """Queue a record; the future resolves to ``(partition, offset)`` once acknowledged."""
        self._last_submit = time.monotonic()
        assert self.producer is not None
        return self.producer.submit(topic, key, value)

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
        oldest = self.producer.oldest_unacknowledged() if self.producer is not None else None
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
        # The embedded broker forgets its topics when restarted; notice it while idle. Only
        # while idle: a metadata request shares the connection with produce requests and
        # would delay them. Under load a dead broker shows up as slow produces anyway.
        now = time.monotonic()
        interval = self.settings.bridge_drain_interval_s
        if now - self._last_check < interval or now - self._last_submit < interval:
            return
        self._last_check = now
        if self.producer is None:
            return
        try:
            exists = await self.producer.topic_exists()
        except ProducerUnavailable as exc:
            self.mark_down(str(exc))
            return
        if not exists:
            log.warning(
                "topic missing (broker restarted?); re-creating", extra={"topic": self.topic}
            )
            self.mark_down("topic missing")

    async def _drain_round(self) -> None:
        batch = self.spool.peek(self.settings.bridge_drain_batch)
        if not batch:
            return
        waits = [self._submit(rec.topic, rec.key, rec.value) for rec in batch]
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
            log.info("spool drained", extra={"drained_total": self.spool.drained_total})
