"""One notification from its channel's lane to Slack and back into Kafka.

``MessageHandler.handle`` decides from ``slack-state`` whether a notification was handled
before, writes the ``intent`` state, posts (``deliver``: paced, retried, bounded) and records
the outcome: ``posted`` (plus the channel id and the day's thread), or ``dead_lettered`` with a
dead letter. With threads on, a notification goes into its app's thread of the day, or, when it
names a message in ``thread_under`` (a health change), into the thread of that message. Every Kafka write is repeated until the broker acknowledges it, so a record is
finished (and may be committed) only once its outcome is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connectors.slack.metrics import SlackMetrics
from connectors.slack.notification import Item, thread_day
from connectors.slack.pacing import ChannelPacer
from connectors.slack.sending import (
    Attempt,
    Delivery,
    LookupFailed,
    Message,
    RetryPolicy,
    Sender,
    deliver,
)
from connectors.slack.state import Source, StateStore, channel_key, entry, thread_key
from streams.domain import cloudevents, timestamps
from streams.domain.records import DEAD_LETTER_V1, DeadLetter, Notification, dumps
from streams.domain.records import dead_letter as records_dead_letter
from streams.kafka.retry import until_kafka_answers

log = logging.getLogger(__name__)

HISTORY_SKEW_S = 120.0  # look this much before the intent: our clock and Slack's differ

T = TypeVar("T")


async def durably(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """Run a Kafka write until the broker acknowledges it; the caller's lane waits meanwhile."""
    return await until_kafka_answers(
        step,
        retry_on=(KafkaError,),
        message="kafka write failed, retrying",
        extra={"write": what},
        logger=log,
    )


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one notification goes: its channel, the known channel id and thread."""

    key: str
    channel: str
    channel_id: str | None
    thread_ts: str | None
    thread_key: str | None


@dataclass
class MessageHandler:
    """Posts one notification and records its outcome in ``slack-state`` (and dead letters)."""

    sender: Sender
    pacer: ChannelPacer
    policy: RetryPolicy
    metrics: SlackMetrics
    store: StateStore
    producer: AIOKafkaProducer
    default_channel: str
    dead_letters_topic: str
    threads: bool

    async def handle(self, lane_key: str, item: Item) -> None:
        """Handle ``item`` (posted, skipped as a duplicate, or dead-lettered) posting on the
        pacer slot ``lane_key``; returns once the outcome is durable in Kafka."""
        source = Source(item.tp.topic, item.tp.partition, item.offset)
        if item.note is None:
            log.error(
                "not a notification; dead-lettered",
                extra={"error": item.error, "partition": source.partition, "offset": source.offset},
            )
            await self._dead_letter(item, item.error, "invalid_notification")
            self.metrics.posts.labels("dead_lettered").inc()
            return
        target = self._target(item.note)
        action = self.store.state.action(target.key, source)
        if action in ("skip_posted", "skip_dead_lettered"):
            log.info(
                "already handled; not posting again", extra={"key": target.key, "state": action}
            )
            self.metrics.posts.labels("skipped_duplicate").inc()
            return
        if action == "check_then_post" and await self._found_earlier_post(target, source):
            return
        await self._post(lane_key, item, item.note, target, source)

    def _target(self, note: Notification) -> _Target:
        state = self.store.state
        channel = note.channel or self.default_channel
        thread_ts = tkey = None
        if self.threads and note.thread_under is not None:
            # A reply to one message (a health change under its deploy): plain when that
            # message is unknown, and never the start of the app's day thread.
            thread_ts = state.reply_ts(note.thread_under, channel)
        elif self.threads:
            app_key = f"{note.app_namespace}/{note.app}"
            tkey = thread_key(channel, app_key, thread_day(note.created_at))
            thread_ts = state.thread_ts(channel, app_key, thread_day(note.created_at))
        key = note.idempotency_key
        return _Target(key, channel, state.channel_id(channel), thread_ts, tkey)

    async def _found_earlier_post(self, target: _Target, source: Source) -> bool:
        """After an interrupted post: True (and recorded as posted) if Slack already has it."""
        intent = self.store.state.get(target.key) or {}
        found = await self._find(target.key, target.channel, intent)
        if not found:
            return False
        ts, channel_id = found
        await self._record_posted(
            target, channel_id or target.channel_id, ts, intent.get("thread_ts"), source
        )
        log.info(
            "found in Slack history after an interrupted post; not posting again",
            extra={"key": target.key, "channel": target.channel, "ts": ts},
        )
        self.metrics.posts.labels("skipped_duplicate").inc()
        return True

    async def _post(
        self, lane_key: str, item: Item, note: Notification, target: _Target, source: Source
    ) -> None:
        key, channel = target.key, target.channel
        message = Message(key, channel, note.text, list(note.blocks), target.thread_ts)
        now = time.time()
        intent = entry(
            "intent",
            key,
            at=now,
            channel=channel,
            channel_id=target.channel_id,
            thread_ts=target.thread_ts,
            source=source.as_json(),
        )
        await durably("intent", lambda: self.store.write(key, intent))
        delivery = await deliver(
            self.sender,
            self.pacer,
            message,
            self.policy,
            pace_key=lane_key,
            since=now - HISTORY_SKEW_S,
            channel_id=target.channel_id,
            on_retry=lambda reason: self.metrics.retries.labels(reason).inc(),
            observe=self.metrics.post_duration.observe,
            log_retry=lambda attempt, wait: self._log_retry(key, channel, attempt, wait),
        )
        if delivery.posted:
            await self._record_posted(
                target, delivery.channel_id, delivery.ts, target.thread_ts, source
            )
            self.metrics.posts.labels("posted").inc()
            return
        await self._give_up(item, target, delivery, source)

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
        target: _Target,
        channel_id: str | None,
        ts: str | None,
        thread_ts: str | None,
        source: Source,
    ) -> None:
        store, key, channel, tkey = self.store, target.key, target.channel, target.thread_key
        posted = entry(
            "posted",
            key,
            channel=channel,
            channel_id=channel_id,
            ts=ts,
            thread_ts=thread_ts,
            source=source.as_json(),
        )
        await durably("posted", lambda: store.write(key, posted))
        if channel_id and store.state.channel_id(channel) != channel_id:
            value = entry("channel", channel_key(channel), channel=channel, channel_id=channel_id)
            await durably("channel", lambda: store.write(channel_key(channel), value))
        if tkey and thread_ts is None and ts:
            # This message started the day's thread of its app: later ones reply to it.
            started = entry("thread", tkey, channel=channel, channel_id=channel_id, ts=ts)
            await durably("thread", lambda: store.write(tkey, started))

    async def _give_up(
        self, item: Item, target: _Target, delivery: Delivery, source: Source
    ) -> None:
        key, channel = target.key, target.channel
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
        await durably("dead_lettered", lambda: self.store.write(key, value))
        self.metrics.posts.labels("dead_lettered").inc()

    async def _dead_letter(self, item: Item, reason: str, error_type: str) -> None:
        record = dead_letter(item, reason, error_type)
        headers = cloudevents.headers(
            DEAD_LETTER_V1, msgspec.to_builtins(record), item.key, self.store.source
        )
        await durably(
            "dead letter",
            lambda: self.producer.send_and_wait(
                self.dead_letters_topic, dumps(record), key=item.key, headers=headers
            ),
        )
        self.metrics.dead_letters.inc()


def dead_letter(item: Item, reason: str, error_type: str) -> DeadLetter:
    """The ``synctrail.dead-letter/v1`` record of ``item`` (component ``slack``)."""
    return records_dead_letter(
        "slack",
        reason=reason or error_type,
        error_type=error_type,
        topic=item.tp.topic,
        partition=item.tp.partition,
        offset=item.offset,
        key=item.key.decode("utf-8", errors="replace") if item.key is not None else None,
        raw=item.value,
        failed_at=timestamps.now(),
    )
