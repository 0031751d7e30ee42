"""The Slack connector: consume ``<prefix>notifications`` → post → record state → commit.

``<prefix>notifications`` is read in the connector's own consumer group with manual commits.
The work is split in three parts, each in its own module:

* ``connectors.slack.fetching.FetchLoop`` fetches records, hands them to the lanes and commits;
  backpressure is per channel (a full lane pauses only the partitions that feed it), and each
  partition is committed only up to its lowest unhandled offset;
* ``connectors.slack.scheduler.ChannelScheduler`` runs one bounded lane per channel, posting
  in order at the channel's pace, so a slow or rate-limited channel does not hold others up;
* ``connectors.slack.handler.MessageHandler`` posts one notification and makes its outcome
  (``posted`` or ``dead_lettered`` state, dead letter) durable before the record counts as done.

This module wires them together and runs the process's life: topics, producer, state, the
credentials check, the consumer, and a bounded drain on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.slack.fetching import FetchLoop, Rebalance
from connectors.slack.handler import MessageHandler
from connectors.slack.metrics import SlackMetrics
from connectors.slack.notification import Item
from connectors.slack.offsets import OffsetTracker
from connectors.slack.pacing import ChannelPacer
from connectors.slack.scheduler import INVALID_LANE, ChannelScheduler
from connectors.slack.sending import (
    HINTS,
    ApiSender,
    Attempt,
    ConsoleSender,
    RetryPolicy,
    Sender,
    WebhookSender,
    classify_exception,
)
from connectors.slack.settings import SlackSettings
from connectors.slack.state import StateStore
from streams.kafka.client import client_args, reader_args
from streams.kafka.retry import Stopped, until_kafka_answers
from streams.kafka.setup import ensure_topics_for
from streams.kafka.topics import DEAD_LETTERS, NOTIFICATIONS, SLACK_STATE

log = logging.getLogger(__name__)


def make_sender(settings: SlackSettings) -> Sender:
    """The way out that the settings choose: webhook, Web API, or the console."""
    if settings.mode == "webhook":
        assert settings.slack_webhook_url is not None
        return WebhookSender(
            settings.slack_webhook_url.get_secret_value(), settings.slack_timeout_s
        )
    if settings.mode == "api":
        assert settings.slack_token is not None
        return ApiSender(
            settings.slack_token.get_secret_value(),
            settings.slack_api_url,
            settings.slack_timeout_s,
            settings.slack_history_limit,
        )
    return ConsoleSender()


class Connector:
    """Consumes notifications, posts them, records state, dead-letters, commits."""

    def __init__(self, settings: SlackSettings, sender: Sender | None = None) -> None:
        self.settings = settings
        self.sender = sender or make_sender(settings)
        self.metrics = SlackMetrics()
        interval = 0.0 if self.sender.mode == "console" else settings.slack_rate_per_channel_s
        self.pacer = ChannelPacer(interval)
        self.policy = RetryPolicy(
            max_attempts=settings.slack_max_attempts,
            backoff_base=settings.slack_backoff_base_s,
            backoff_max=settings.slack_backoff_max_s,
            rate_limit_max_wait=settings.slack_rate_limit_max_wait_s,
        )
        prefix = settings.topic_prefix
        self.topic = NOTIFICATIONS.address(prefix)
        self.dead_letters_topic = DEAD_LETTERS.address(prefix)
        self.state_topic = SLACK_STATE.address(prefix)
        self.threads = settings.slack_threads == "app" and self.sender.supports_threads
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.scheduler = ChannelScheduler(
            self._handle, self.tracker, settings.slack_channel_queue_max, self._fail
        )
        self.fetch: FetchLoop | None = None
        self.handler: MessageHandler | None = None
        self.consuming = False
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.store: StateStore | None = None
        self.fatal: BaseException | None = None
        self._stop = asyncio.Event()

    def lane_of(self, item: Item) -> str:
        """The lane (and pacing key) of ``item``: its channel, or the one way out there is."""
        if item.note is None:
            return INVALID_LANE
        if self.sender.mode != "api":
            return self.sender.mode  # one destination: a webhook's channel, or stdout
        return item.note.channel or self.settings.slack_channel

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        s = self.settings
        self._stop = stop
        if s.slack_threads == "app" and not self.threads:
            log.warning("SYNCTRAIL_SLACK_THREADS=app needs a bot token; posting without threads")
        if not await self._until(stop, self._ensure_topics, "create topics"):
            return 0
        producer = self._producer = AIOKafkaProducer(
            **client_args(s), acks="all", enable_idempotence=False
        )
        try:
            if not await self._until(stop, producer.start, "start producer"):
                return 0
            if not await self._until(stop, self._load_state, "load slack-state"):
                return 0
            code = await self._check_sender()
            if code:
                return code
            return await self._consume(stop)
        finally:
            await self._shutdown()

    async def _until(
        self, stop: asyncio.Event, step: Callable[[], Awaitable[object]], what: str
    ) -> bool:
        """Run ``step`` until it succeeds (Kafka may come up later) or ``stop`` is set."""
        try:
            await until_kafka_answers(step, extra={"step": what}, stop=stop, logger=log)
        except Stopped:
            return False
        return True

    async def _load_state(self) -> None:
        assert self._producer is not None
        s = self.settings
        store = self.store = StateStore(s, self.state_topic, self._producer, s.ce_source())
        started = time.monotonic()
        read = await store.load()
        pruned = await store.prune(s.slack_state_retention_days * 86400)
        log.info(
            "slack state loaded",
            extra={
                "records": read,
                "keys": len(store.state.entries),
                "pruned": pruned,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        self.handler = MessageHandler(
            sender=self.sender,
            pacer=self.pacer,
            policy=self.policy,
            metrics=self.metrics,
            store=store,
            producer=self._producer,
            default_channel=s.slack_channel,
            dead_letters_topic=self.dead_letters_topic,
            threads=self.threads,
        )

    async def _ensure_topics(self) -> None:
        await ensure_topics_for(self.settings, topics=(NOTIFICATIONS, DEAD_LETTERS, SLACK_STATE))

    async def _check_sender(self) -> int:
        """Say where messages go; stop at once (exit 2) if Slack rejects the credentials."""
        try:
            who = await self.sender.check()
        except Exception as exc:
            try:
                attempt = classify_exception(exc)
            except Exception:
                attempt = Attempt("network", error=repr(exc))
            if attempt.outcome == "permanent":
                log.error(
                    "Slack rejected the credentials; not starting",
                    extra={"error": attempt.error, "hint": HINTS.get(attempt.error, "")},
                )
                return 2
            log.warning(
                "Slack not reachable at start; will retry per message",
                extra={"error": attempt.error},
            )
            who = "unverified"
        log.info(
            "slack connector ready",
            extra={
                "mode": self.sender.mode,
                "as": who,
                "threads": self.threads,
                "topic": self.topic,
            },
        )
        return 0

    def _make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **reader_args(s, group_id=s.slack_group_id),
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(s.broker_session_timeout_s * 1000 / 3)),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout_s * 1000),
            max_poll_interval_ms=max(300_000, int(s.slack_rate_limit_max_wait_s * 2000)),
        )

    async def _consume(self, stop: asyncio.Event) -> int:
        s = self.settings
        consumer = self._consumer = self._make_consumer()
        listener = Rebalance()
        fetch = self.fetch = listener.loop = FetchLoop(
            consumer,
            self.scheduler,
            self.tracker,
            self.metrics,
            self.lane_of,
            max_in_flight=s.slack_max_in_flight,
            release_timeout_s=s.broker_rebalance_timeout_s * 0.8,
        )
        consumer.subscribe([self.topic], listener=listener)
        if not await self._until(stop, consumer.start, "start consumer"):
            return 0
        committer = asyncio.create_task(fetch.commit_loop(), name="slack-commit")
        self.consuming = True
        self.metrics.up.set(1)
        try:
            await fetch.run(stop)
        finally:
            self.consuming = False
            self.metrics.up.set(0)
            await self.scheduler.drain(s.slack_shutdown_grace_s)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await fetch.commit()
        return 1 if self.fatal else 0

    async def _handle(self, lane_key: str, item: Item) -> None:
        assert self.handler is not None
        await self.handler.handle(lane_key, item)

    def _fail(self, exc: BaseException) -> None:
        """A lane hit a bug: remember it (exit code 1) and stop the process."""
        self.fatal = exc
        self._stop.set()

    async def _shutdown(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        with contextlib.suppress(Exception):
            await self.sender.close()
