"""Never twice: the connector's state, kept in the compacted topic ``<prefix>slack-state``.

Per notification (keyed by its idempotency key) the connector writes, and waits for the
broker's acknowledgement of:

1. ``intent`` before calling Slack,
2. ``posted`` (with Slack's ts) or ``dead_lettered`` after,

and only then commits the notification's offset. On start it reads the whole topic back. A key
whose last word is ``posted`` is skipped; one left at ``intent`` was interrupted mid-post, so
the connector looks in the channel's recent history for a message carrying that key (message
metadata) before posting again. ``thread`` entries hold the day's thread ts per app and channel;
``channel`` entries remember a channel's Slack id (history needs the id, not the name). A
``posted`` entry also serves as a thread parent: a notification naming its key in
``thread_under`` (a health change under its deploy) replies in that message's thread.

``SlackState`` is the pure in-memory view and the decisions; ``StateStore`` does the I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.domain import cloudevents
from streams.domain.cloudevents import Header
from streams.domain.records import SLACK_STATE_V1
from streams.kafka.client import Connection, connection
from streams.kafka.offsets import read_to_end, topic_partitions

STATE_V1 = SLACK_STATE_V1
Headers = list[Header]

log = logging.getLogger(__name__)

Action = Literal["post", "skip_posted", "skip_dead_lettered", "check_then_post"]


def thread_key(channel: str, app_key: str, day: str) -> str:
    """State key of the thread of ``app_key`` in ``channel`` on ``day`` (YYYY-MM-DD, UTC)."""
    return f"thread:{channel}:{app_key}:{day}"


def channel_key(channel: str) -> str:
    """State key of a channel's Slack id."""
    return f"channel:{channel}"


def entry(kind: str, key: str, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
    """A ``synctrail.slack-state/v1`` value."""
    value = {
        "schema": STATE_V1,
        "kind": kind,
        "key": key,
        "channel": None,
        "channel_id": None,
        "ts": None,
        "thread_ts": None,
        "at": time.time() if at is None else at,
        "source": None,
        "reason": None,
    }
    value.update(fields)
    return value


@dataclass(frozen=True, slots=True)
class Source:
    """Where a notification came from: dead letters remember it, replays differ from it."""

    topic: str
    partition: int
    offset: int

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


class SlackState:
    """The latest state value per key, and what to do with a notification."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def apply(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Fold one record of the state topic (``None`` deletes the key)."""
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = dict(value)

    def get(self, key: str) -> dict[str, Any] | None:
        """The latest value for ``key``."""
        return self.entries.get(key)

    def action(self, key: str, source: Source) -> Action:
        """What to do with the notification ``key`` read at ``source``.

        A dead-lettered key is skipped only when it is the very record that was dead-lettered
        (redelivered before its commit); the same key arriving from elsewhere is a replay of the
        dead letter, and is tried again.
        """
        current = self.entries.get(key)
        if current is None:
            return "post"
        kind = current.get("kind")
        if kind == "posted":
            return "skip_posted"
        if kind == "intent":
            return "check_then_post"
        if kind == "dead_lettered" and current.get("source") == source.as_json():
            return "skip_dead_lettered"
        return "post"

    def thread_ts(self, channel: str, app_key: str, day: str) -> str | None:
        """The ts of the day's thread for ``app_key`` in ``channel``."""
        value = self.entries.get(thread_key(channel, app_key, day))
        return value.get("ts") if value else None

    def reply_ts(self, key: str, channel: str) -> str | None:
        """The thread to reply to the message posted for ``key`` in: its own thread's ts when it
        was itself a reply (Slack threads do not nest), else its ts. None when no message was
        posted for ``key`` (never, or pruned) or it was posted to another channel."""
        value = self.entries.get(key)
        if not value or value.get("kind") != "posted" or value.get("channel") != channel:
            return None
        return value.get("thread_ts") or value.get("ts")

    def channel_id(self, channel: str) -> str | None:
        """The Slack id of ``channel`` (itself when it already looks like an id)."""
        value = self.entries.get(channel_key(channel))
        if value and value.get("channel_id"):
            return str(value["channel_id"])
        return channel if channel[:1] in ("C", "G", "D") and channel.isalnum() else None

    def expired(self, now: float, retention_s: float) -> list[str]:
        """Keys of finished messages and threads older than ``retention_s``.

        ``intent`` entries are kept (they still need a check) and so are channel ids.
        """
        old = now - retention_s
        return [
            key
            for key, value in self.entries.items()
            if value.get("kind") in ("posted", "dead_lettered", "thread")
            and float(value.get("at") or 0) < old
        ]


class StateStore:
    """Reads ``<prefix>slack-state`` into a ``SlackState`` and writes to it durably."""

    def __init__(
        self, bootstrap: Connection, topic: str, producer: AIOKafkaProducer, source: str = ""
    ) -> None:
        # bootstrap: the settings (every process) or a plaintext host:port
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer = producer
        self.state = SlackState()
        #: the ``ce_source`` of what the connector writes (``SYNCTRAIL_EVENT_SOURCE``)
        self.source = source or cloudevents.default_source(topic.removesuffix("slack-state"))

    async def load(self, timeout_s: float = 60.0) -> int:
        """Read the topic from the beginning to the end offsets seen now; returns records read."""
        consumer = AIOKafkaConsumer(
            **connection(self.bootstrap),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        read = 0
        try:
            tps = await topic_partitions(consumer, self.topic)
            if not tps:
                raise RuntimeError(f"topic {self.topic} has no partitions; was it created?")
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            async for messages in read_to_end(consumer, tps, timeout_s=timeout_s, max_records=5000):
                for m in messages:
                    if m.key is None:
                        continue
                    value = orjson.loads(m.value) if m.value is not None else None
                    self.state.apply(m.key.decode(), value)
                    read += 1
        finally:
            await consumer.stop()
        return read

    async def write(self, key: str, value: dict[str, Any] | None) -> None:
        """Write one state value and wait for the broker's acknowledgement, then apply it."""
        payload = None if value is None else orjson.dumps(value)
        await self.producer.send_and_wait(
            self.topic, payload, key=key.encode(), headers=self._headers(key, value, time.time())
        )
        self.state.apply(key, value)

    def _headers(self, key: str, value: Mapping[str, Any] | None, now: float) -> Headers:
        """CloudEvents headers of a state record (a tombstone's time: ``now``)."""
        when = None if value is not None else cloudevents.unix_to_rfc3339(now)
        return cloudevents.headers(STATE_V1, value, key, self.source, time=when)

    async def prune(self, retention_s: float) -> int:
        """Delete (tombstone) entries older than ``retention_s``; returns how many."""
        now = time.time()
        keys = self.state.expired(now, retention_s)
        sent = [
            await self.producer.send(
                self.topic, None, key=k.encode(), headers=self._headers(k, None, now)
            )
            for k in keys
        ]
        for future, key in zip(sent, keys, strict=True):
            await future
            self.state.apply(key, None)
        return len(keys)
