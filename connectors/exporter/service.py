"""The exporter process: read two topics from the beginning, fold them, serve /metrics.

No consumer group and no committed offsets: every start assigns all partitions of
``<prefix>metrics`` and ``<prefix>dead-letters``, seeks to the beginning and folds the whole
history again, so counters and gauges (``last_deploy`` included) come back after a restart as
they were. /readyz answers 200 once the exporter has read up to the end offsets it saw at start;
until then /metrics shows only the exporter's own series, so Prometheus never scrapes a
half-rebuilt counter (which ``rate()`` would take for a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connectors.exporter.fold import Folder
from connectors.exporter.settings import ExporterSettings
from connectors.http import start_http
from streams.kafka.client import reader_args
from streams.kafka.offsets import log_end_offsets, read_to_end, topic_partitions
from streams.kafka.retry import until_kafka_answers
from streams.kafka.setup import ensure_topics_for
from streams.kafka.topics import DEAD_LETTERS, METRICS

log = logging.getLogger(__name__)

_RETRY_MAX_S = 2.0  # the longest wait between two tries to reach Kafka


class Exporter:
    """Consumes the metric and dead-letter topics into a ``Folder`` and tracks readiness."""

    def __init__(self, settings: ExporterSettings) -> None:
        self.settings = settings
        self.folder = Folder(settings.exporter_max_apps, settings.exporter_dedupe_window)
        self.metrics_topic = METRICS.address(settings.topic_prefix)
        self.dead_letters_topic = DEAD_LETTERS.address(settings.topic_prefix)
        self.ready = False
        self.own = CollectorRegistry(auto_describe=True)
        self._ready_gauge = Gauge(
            "synctrail_exporter_ready",
            "1 once the exporter has folded the topics' history up to the end offsets seen at "
            "start; deployment series are served only from then on.",
            registry=self.own,
        )
        self._behind_gauge = Gauge(
            "synctrail_exporter_lag_records",
            "Records on the consumed topics not folded yet.",
            registry=self.own,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._targets: dict[TopicPartition, int] = {}

    def render(self) -> bytes:
        """The text exposition: own series always, folded series once ready."""
        body = generate_latest(self.own)
        if self.ready:
            body += generate_latest(self.folder.registry)
        return body

    async def _connect(self) -> AIOKafkaConsumer:
        s = self.settings
        await ensure_topics_for(s, topics=(METRICS, DEAD_LETTERS))
        consumer = AIOKafkaConsumer(
            # manual assignment, nothing committed: every start replays
            **reader_args(s, group_id=None)
        )
        await consumer.start()
        try:
            tps = await self._partitions(consumer)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._targets = await log_end_offsets(consumer, tps)
        except BaseException:
            await consumer.stop()
            raise
        log.info(
            "exporter replaying topics",
            extra={
                "topics": [self.metrics_topic, self.dead_letters_topic],
                "partitions": len(tps),
                "records_to_replay_at_most": sum(self._targets.values()),
            },
        )
        return consumer

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        tps: list[TopicPartition] = []
        for topic in (self.metrics_topic, self.dead_letters_topic):
            parts = await topic_partitions(consumer, topic)
            if not parts:
                raise KafkaError(f"no partitions known for {topic}")
            tps.extend(parts)
        return tps

    async def _behind(self, consumer: AIOKafkaConsumer) -> int:
        behind = 0
        for tp, end in self._targets.items():
            behind += max(end - await consumer.position(tp), 0)
        return behind

    async def consume(self) -> None:
        """Fold records forever; set ``ready`` once the start-time end offsets are reached."""
        consumer = await until_kafka_answers(self._connect, wait_max=_RETRY_MAX_S, logger=log)
        self._consumer = consumer
        started = time.monotonic()
        try:
            self._behind_gauge.set(await self._behind(consumer))
            async for messages in read_to_end(
                consumer, self._targets, ends=self._targets, max_records=2000
            ):
                self._fold(messages)
                self._behind_gauge.set(await self._behind(consumer))
            self._mark_ready(started)
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                for messages in batch.values():
                    self._fold(messages)
                self._behind_gauge.set(await self._lag(consumer))
        finally:
            self._consumer = None
            await consumer.stop()

    def _fold(self, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Fold one partition's records."""
        if not messages:
            return
        fold = (
            self.folder.fold_metric
            if messages[0].topic == self.metrics_topic
            else self.folder.fold_dead_letter
        )
        for message in messages:
            fold(message.value)

    async def _lag(self, consumer: AIOKafkaConsumer) -> int:
        # highwater() is what the last fetch response said: no extra request per batch.
        lag = 0
        for tp in self._targets:
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(high - await consumer.position(tp), 0)
        return lag

    def _mark_ready(self, started: float) -> None:
        self.ready = True
        self._ready_gauge.set(1)
        log.info(
            "exporter caught up",
            extra={
                "seconds": round(time.monotonic() - started, 3),
                "apps": self.folder.tracked_apps,
            },
        )


def make_app(exporter: Exporter) -> web.Application:
    """The HTTP endpoints: /metrics, /healthz, /readyz."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exporter.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if exporter.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "replaying"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: ExporterSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    exporter = Exporter(settings)
    runner = await start_http(
        make_app(exporter), settings.exporter_host, settings.exporter_port, "exporter"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    consumer = asyncio.create_task(exporter.consume(), name="exporter-consume")
    stopper = asyncio.create_task(stop.wait(), name="exporter-stop")
    code = 0
    try:
        await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if consumer.done():
            # The consume loop never returns on its own: it failed. Exit so a supervisor
            # restarts the process, which rebuilds everything from the topics.
            log.error("exporter consumer failed", exc_info=consumer.exception())
            code = 1
    finally:
        for task in (consumer, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await runner.cleanup()
        log.info("exporter stopped")
    return code
