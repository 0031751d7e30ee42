"""The Slack connector's consume → post → commit loop.

``<prefix>notifications`` is read in the connector's own consumer group with manual commits.
Each record goes to the lane of its channel (one asyncio task per channel, posting in order at
the channel's pace), so a slow or rate-limited channel does not hold the others up, while one
app's messages (one partition, one channel) keep their order. Offsets are committed per
partition only up to the first record still in flight (``OffsetTracker``), and a record is
finished only after its ``posted`` or ``dead_lettered`` state was acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connectors.broker import ensure_topics_for
from connectors.slack.metrics import SlackMetrics
from connectors.slack.offsets import OffsetTracker
from connectors.slack.pacing import ChannelPacer
from connectors.slack.sending import (
    HINTS,
    ApiSender,
    Attempt,
    ConsoleSender,
    Delivery,
    LookupFailed,
    Message,
    RetryPolicy,
    Sender,
    WebhookSender,
    classify_exception,
    deliver,
)
from connectors.slack.settings import SlackSettings
from connectors.slack.state import Source, StateStore, channel_key, entry, thread_key
from streams.kafka_client import client_args
from streams.records import DEAD_LETTER_V1, NOTIFICATION_V1
from streams.topics import DEAD_LETTERS, NOTIFICATIONS, SLACK_STATE

log = logging.getLogger(__name__)

INVALID_LANE = "\x00invalid"  # lane of records that are not notifications (dead-lettered)
HISTORY_SKEW_S = 120.0  # look this much before the intent: our clock and Slack's differ
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_KAFKA_RETRY_S = (0.5, 1.0, 2.0, 5.0)


class InvalidNotification(ValueError):
    """A record on the notifications topic that cannot be posted as it is."""


def parse_notification(raw: bytes | None) -> dict[str, Any]:
    """The notification in ``raw``, checked for what posting needs; raises ``InvalidNotification``."""
    if raw is None:
        raise InvalidNotification("empty record (tombstone)")
    try:
        note = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidNotification(f"not JSON: {exc}") from exc
    if not isinstance(note, dict):
        raise InvalidNotification("not a JSON object")
    if note.get("schema") != NOTIFICATION_V1:
        raise InvalidNotification(f"schema is {note.get('schema')!r}, expected {NOTIFICATION_V1}")
    key = note.get("idempotency_key")
    if not isinstance(key, str) or not key:
        raise InvalidNotification("idempotency_key: expected a non-empty string")
    if not isinstance(note.get("text"), str) or not note["text"].strip():
        raise InvalidNotification("text: expected a non-empty string (the fallback text)")
    if not isinstance(note.get("blocks") or [], list):
        raise InvalidNotification("blocks: expected a list")
    if note.get("channel") is not None and not isinstance(note["channel"], str):
        raise InvalidNotification("channel: expected a string")
    return note


def thread_day(note: dict[str, Any]) -> str:
    """The UTC day a notification belongs to (its ``created_at``; today if unreadable)."""
    created = str(note.get("created_at") or "")[:10]
    return created if _DAY.fullmatch(created) else datetime.now(UTC).strftime("%Y-%m-%d")


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


@dataclass(slots=True)
class _Item:
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    note: dict[str, Any] | None
    error: str = ""


class _Lane:
    """One channel's queue and the task that posts from it, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.busy = False


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.connector.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "slack connector assigned partitions",
            extra={"partitions": sorted(tp.partition for tp in assigned)},
        )


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
        self.lanes: dict[str, _Lane] = {}
        self.consuming = False
        self._closing = False
        self._progress = asyncio.Event()  # a record finished: maybe fetch more, drain
        self._commit_needed = asyncio.Event()  # a record finished: commit
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.store: StateStore | None = None
        self.fatal: BaseException | None = None
        self._stop = asyncio.Event()

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

    async def _until(self, stop: asyncio.Event, step: Any, what: str) -> bool:
        """Run ``step`` until it succeeds (Kafka may come up later) or ``stop`` is set."""
        for attempt in range(1_000_000):
            if stop.is_set():
                return False
            try:
                await step()
                return True
            except (KafkaError, OSError) as exc:
                wait = _KAFKA_RETRY_S[min(attempt, len(_KAFKA_RETRY_S) - 1)]
                log.warning(
                    "kafka not reachable, retrying", extra={"step": what, "error": repr(exc)}
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        return False

    async def _load_state(self) -> None:
        assert self._producer is not None
        s = self.settings
        store = self.store = StateStore(s, self.state_topic, self._producer)
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

    async def _ensure_topics(self) -> None:
        s = self.settings
        await ensure_topics_for(
            s,
            topics=(NOTIFICATIONS, DEAD_LETTERS, SLACK_STATE),
        )

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

    async def _consume(self, stop: asyncio.Event) -> int:
        s = self.settings
        consumer = self._consumer = AIOKafkaConsumer(
            **client_args(s),
            group_id=s.slack_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # never what an aborted worker transaction wrote
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(s.broker_session_timeout_s * 1000 / 3)),
            rebalance_timeout_ms=int(s.broker_rebalance_timeout_s * 1000),
            max_poll_interval_ms=max(300_000, int(s.slack_rate_limit_max_wait_s * 2000)),
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        if not await self._until(stop, consumer.start, "start consumer"):
            return 0
        committer = asyncio.create_task(self._commit_loop(), name="slack-commit")
        self.consuming = True
        self.metrics.up.set(1)
        try:
            while not stop.is_set():
                if self.tracker.in_flight() >= s.slack_max_in_flight:
                    await self._wait_progress(stop, 0.5)
                    continue
                try:
                    batch = await consumer.getmany(
                        timeout_ms=300,
                        max_records=max(1, s.slack_max_in_flight - self.tracker.in_flight()),
                    )
                except KafkaError as exc:
                    log.warning("fetch failed, retrying", extra={"error": repr(exc)})
                    await self._wait_progress(stop, 1.0)
                    continue
                for tp, messages in batch.items():
                    for m in messages:
                        self._dispatch(_item(tp, m.offset, m.key, m.value))
                await self._update_backlog(consumer)
        finally:
            self.consuming = False
            self.metrics.up.set(0)
            await self._drain(s.slack_shutdown_grace_s)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._commit()
        return 1 if self.fatal else 0

    async def _wait_progress(self, stop: asyncio.Event, timeout: float) -> None:
        waiters = [asyncio.ensure_future(self._progress.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _drain(self, grace: float) -> None:
        """Let the messages being posted finish (up to ``grace`` s); start no new ones."""
        self._closing = True
        deadline = time.monotonic() + grace
        while any(lane.busy for lane in self.lanes.values()) and time.monotonic() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait(), max(0.01, deadline - time.monotonic())
                )
        for lane in self.lanes.values():
            if lane.task:
                lane.task.cancel()
        for lane in self.lanes.values():
            if lane.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lane.task

    async def _shutdown(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        with contextlib.suppress(Exception):
            await self.sender.close()

    # ------------------------------------------------------------------ offsets

    async def _commit_loop(self) -> None:
        # Its own event (others clear ``_progress``), and a timeout as a safety net.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit_needed.wait(), 1.0)
            self._commit_needed.clear()
            if not await self._commit():
                await asyncio.sleep(0.5)

    async def _commit(self) -> bool:
        offsets = self.tracker.to_commit()
        if not offsets or self._consumer is None:
            return True
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed; will retry", extra={"error": repr(exc)})
            return False
        self.tracker.committed(offsets)
        return True

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Partitions are being taken away: finish their records (bounded), commit, forget."""
        deadline = time.monotonic() + self.settings.broker_rebalance_timeout_s * 0.8
        while self.tracker.in_flight(revoked) and time.monotonic() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), 0.2)
        await self._commit()
        self.tracker.forget(revoked)

    async def _update_backlog(self, consumer: AIOKafkaConsumer) -> None:
        backlog = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            start = self.tracker.first_pending(tp)
            if start is None:
                try:
                    start = await consumer.position(tp)
                except KafkaError:  # IllegalStateError: revoked meanwhile (rebalance)
                    continue
            backlog += max(0, high - start)
        self.metrics.backlog.set(backlog)

    # ------------------------------------------------------------------ lanes

    def _pace_key(self, note: dict[str, Any]) -> str:
        if self.sender.mode != "api":
            return self.sender.mode  # one destination: a webhook's channel, or stdout
        return str(note.get("channel") or self.settings.slack_channel)

    def _dispatch(self, item: _Item) -> None:
        self.tracker.add(item.tp, item.offset)
        lane_key = INVALID_LANE if item.note is None else self._pace_key(item.note)
        lane = self.lanes.get(lane_key)
        if lane is None:
            lane = self.lanes[lane_key] = _Lane()
            lane.task = asyncio.create_task(
                self._run_lane(lane_key, lane), name=f"slack-lane-{lane_key}"
            )
        lane.queue.put_nowait(item)

    async def _run_lane(self, lane_key: str, lane: _Lane) -> None:
        while not self._closing:
            item = await lane.queue.get()
            if self._closing:
                return
            lane.busy = True
            try:
                await self._handle(lane_key, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug must not lose the record silently, nor spin on it: the record stays
                # uncommitted, the process exits 1 and a supervisor restarts it.
                log.exception("slack lane failed", extra={"lane": lane_key, "offset": item.offset})
                self.fatal = exc
                self._stop.set()
                return
            finally:
                lane.busy = False
            self.tracker.done(item.tp, item.offset)
            self._progress.set()
            self._commit_needed.set()

    async def _durably(self, what: str, step: Any) -> Any:
        """Run a Kafka write until the broker acknowledges it; the lane waits meanwhile."""
        for attempt in range(1_000_000):
            try:
                return await step()
            except KafkaError as exc:
                wait = _KAFKA_RETRY_S[min(attempt, len(_KAFKA_RETRY_S) - 1)]
                log.warning(
                    "kafka write failed, retrying", extra={"write": what, "error": repr(exc)}
                )
                await asyncio.sleep(wait)
        return None

    # ------------------------------------------------------------------ one notification

    async def _handle(self, lane_key: str, item: _Item) -> None:
        assert self.store is not None
        source = Source(item.tp.topic, item.tp.partition, item.offset)
        if item.note is None:
            log.error(
                "not a notification; dead-lettered",
                extra={"error": item.error, "partition": source.partition, "offset": source.offset},
            )
            await self._dead_letter(item, item.error, "invalid_notification")
            self.metrics.posts.labels("dead_lettered").inc()
            return
        note = item.note
        key = str(note["idempotency_key"])
        state = self.store.state
        action = state.action(key, source)
        if action in ("skip_posted", "skip_dead_lettered"):
            log.info("already handled; not posting again", extra={"key": key, "state": action})
            self.metrics.posts.labels("skipped_duplicate").inc()
            return
        channel = str(note.get("channel") or self.settings.slack_channel)
        channel_id = state.channel_id(channel)
        thread_ts: str | None = None
        tkey = None
        if self.threads:
            app_key = f"{note.get('app_namespace')}/{note.get('app')}"
            tkey = thread_key(channel, app_key, thread_day(note))
            thread_ts = state.thread_ts(channel, app_key, thread_day(note))
        if action == "check_then_post":
            intent = state.get(key) or {}
            found = await self._find(key, channel, intent)
            if found:
                await self._record_posted(
                    key,
                    channel,
                    found[1] or channel_id,
                    found[0],
                    intent.get("thread_ts"),
                    source,
                    tkey,
                )
                log.info(
                    "found in Slack history after an interrupted post; not posting again",
                    extra={"key": key, "channel": channel, "ts": found[0]},
                )
                self.metrics.posts.labels("skipped_duplicate").inc()
                return
        message = Message(
            key, channel, str(note["text"]), list(note.get("blocks") or []), thread_ts
        )
        now = time.time()
        await self._durably(
            "intent",
            lambda: self.store.write(
                key,
                entry(
                    "intent",
                    key,
                    at=now,
                    channel=channel,
                    channel_id=channel_id,
                    thread_ts=thread_ts,
                    source=source.as_json(),
                ),
            ),
        )
        delivery = await deliver(
            self.sender,
            self.pacer,
            message,
            self.policy,
            pace_key=lane_key,
            since=now - HISTORY_SKEW_S,
            channel_id=channel_id,
            on_retry=lambda reason: self.metrics.retries.labels(reason).inc(),
            observe=self.metrics.post_duration.observe,
            log_retry=lambda attempt, wait: self._log_retry(key, channel, attempt, wait),
        )
        if delivery.posted:
            await self._record_posted(
                key, channel, delivery.channel_id, delivery.ts, thread_ts, source, tkey
            )
            self.metrics.posts.labels("posted").inc()
            return
        await self._give_up(item, key, channel, delivery, source)

    def _log_retry(self, key: str, channel: str, attempt: Attempt, wait: float) -> None:
        log.warning(
            "slack call failed; retrying",
            extra={
                "key": key,
                "channel": channel,
                "outcome": attempt.outcome,
                "error": attempt.error,
                "status": attempt.status,
                "wait_s": round(wait, 3),
            },
        )

    async def _find(
        self, key: str, channel: str, intent: dict[str, Any]
    ) -> tuple[str, str | None] | None:
        """Look for an interrupted post in Slack; None when absent or when we cannot tell."""
        if not self.sender.can_find:
            log.warning(
                "a post was interrupted and this mode cannot check Slack; posting again "
                "(the message may appear twice)",
                extra={"key": key, "mode": self.sender.mode},
            )
            return None
        since = float(intent.get("at") or time.time()) - HISTORY_SKEW_S
        try:
            return await self.sender.find(
                key, channel, intent.get("channel_id"), intent.get("thread_ts"), since
            )
        except LookupFailed as exc:
            log.warning(
                "could not check Slack for an interrupted post; posting again "
                "(the message may appear twice)",
                extra={"key": key, "channel": channel, "error": str(exc)},
            )
            return None

    async def _record_posted(
        self,
        key: str,
        channel: str,
        channel_id: str | None,
        ts: str | None,
        thread_ts: str | None,
        source: Source,
        tkey: str | None,
    ) -> None:
        assert self.store is not None
        store = self.store
        posted = entry(
            "posted",
            key,
            channel=channel,
            channel_id=channel_id,
            ts=ts,
            thread_ts=thread_ts,
            source=source.as_json(),
        )
        await self._durably("posted", lambda: store.write(key, posted))
        if channel_id and store.state.channel_id(channel) != channel_id:
            value = entry("channel", channel_key(channel), channel=channel, channel_id=channel_id)
            await self._durably("channel", lambda: store.write(channel_key(channel), value))
        if tkey and thread_ts is None and ts:
            # This message started the day's thread of its app: later ones reply to it.
            value = entry("thread", tkey, channel=channel, channel_id=channel_id, ts=ts)
            await self._durably("thread", lambda: store.write(tkey, value))

    async def _give_up(
        self, item: _Item, key: str, channel: str, delivery: Delivery, source: Source
    ) -> None:
        assert self.store is not None
        store = self.store
        log.error(
            "notification dead-lettered",
            extra={
                "key": key,
                "channel": channel,
                "error": delivery.error,
                "reason": delivery.reason,
                "attempts": delivery.attempts,
            },
        )
        await self._dead_letter(item, delivery.reason, delivery.error or "slack_error")
        value = entry(
            "dead_lettered", key, channel=channel, source=source.as_json(), reason=delivery.reason
        )
        await self._durably("dead_lettered", lambda: store.write(key, value))
        self.metrics.posts.labels("dead_lettered").inc()

    async def _dead_letter(self, item: _Item, reason: str, error_type: str) -> None:
        assert self._producer is not None
        producer = self._producer
        original_text = None
        original: Any = item.note
        if original is None and item.value is not None:
            try:
                original = orjson.loads(item.value)
            except orjson.JSONDecodeError:
                original_text = item.value.decode("utf-8", errors="replace")
        record = {
            "schema": DEAD_LETTER_V1,
            "component": "slack",
            "reason": reason or error_type,
            "error_type": error_type,
            "source_topic": item.tp.topic,
            "source_partition": item.tp.partition,
            "source_offset": item.offset,
            "key": item.key.decode("utf-8", errors="replace") if item.key is not None else None,
            "original": original,
            "original_text": original_text,
            "failed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        }
        await self._durably(
            "dead letter",
            lambda: producer.send_and_wait(
                self.dead_letters_topic, orjson.dumps(record), key=item.key
            ),
        )
        self.metrics.dead_letters.inc()


def _item(tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> _Item:
    try:
        note = parse_notification(value)
        return _Item(tp, offset, key, value, note)
    except InvalidNotification as exc:
        return _Item(tp, offset, key, value, None, str(exc))
