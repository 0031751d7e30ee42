"""``synctrail replay-dead-letters``: send dead-lettered records back to their source topic.

Reads ``<prefix>dead-letters`` up to the end offsets seen at start. A dead letter is replayed
when its ``source_topic`` is one of synctrail's own topics (never the dead-letter topic itself)
and it carries the original record (``original`` JSON, or ``original_text``); the original goes
back to that topic with its original key, so it lands on the same partition as before and
keeps its app's order from then on. Everything else is listed and skipped.

Progress is committed under a consumer group (``SYNCTRAIL_DEAD_LETTER_REPLAY_GROUP``) once
every replayed record is acknowledged, so the next run replays only newer dead letters;
``--from-beginning`` ignores that progress, ``--dry-run`` prints and commits nothing.
Replaying is safe to repeat: the worker suppresses repeated deliveries and the Slack connector
never posts the same idempotency key twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import Field

from streams.domain import cloudevents
from streams.domain.records import DEAD_LETTER_V1, POLICY_CHECK_V1, dumps, loads_or_none
from streams.kafka.client import admin_args, producer_args, reader_args
from streams.kafka.offsets import log_end_offsets, read_to_end
from streams.kafka.topics import ALL_TOPICS, CDEVENTS, DEAD_LETTERS
from streams.settings import CommonSettings

_PREVIEW_CHARS = 160


class DeadLetterReplaySettings(CommonSettings):
    """`synctrail replay-dead-letters`."""

    dead_letter_replay_group: str = Field(
        "synctrail-dead-letter-replay",
        description="Consumer group that records how far replay-dead-letters has got.",
    )


@dataclass(frozen=True)
class Decision:
    """What to do with one dead letter: ``send`` ``value`` to ``topic``, or skip it.

    ``outcome`` is ``send`` or the skip category counted in the summary; ``reason`` is the
    dead letter's own failure reason when sending, else why it is skipped.
    """

    outcome: str
    reason: str
    topic: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    #: the replayed record's CloudEvents headers, computed again from the original
    headers: list[cloudevents.Header] | None = None

    @property
    def send(self) -> bool:
        return self.outcome == "send"


def replayable_topics(prefix: str) -> set[str]:
    """synctrail's topics that a dead letter may be sent back to (not ``cdevents``: no synctrail
    component reads it, so none dead-letters a record of it)."""
    return {spec.address(prefix) for spec in ALL_TOPICS if spec not in (DEAD_LETTERS, CDEVENTS)}


def replay_headers(
    dead_letter: dict[str, Any], topic: str, prefix: str, source: str
) -> list[cloudevents.Header]:
    """The CloudEvents headers of a replayed original, computed from it as its writer did
    (the dead letter does not keep the original's headers): a valid original has the
    ``ce_id`` it had; one that never was valid is identified by its content, so replaying it
    again gives the same id too."""
    original, key = dead_letter.get("original"), dead_letter.get("key")
    schema = original.get("schema") if isinstance(original, dict) else None
    if schema not in cloudevents.IDENTITY:
        schema = next(spec.schema for spec in ALL_TOPICS if spec.address(prefix) == topic)
    if original is None:  # kept as text: identified by that text
        original = dead_letter.get("original_text")
    partition = dead_letter.get("source_partition")
    n = partition if schema == POLICY_CHECK_V1 and isinstance(partition, int) else 0
    return cloudevents.headers(
        schema, original, key, source or cloudevents.default_source(prefix), n=n
    )


def decide(dead_letter: Any, prefix: str, source: str = "") -> Decision:
    """Decide whether a dead letter can be replayed, and build the record to send (with its
    CloudEvents headers, ``source`` being ``SYNCTRAIL_EVENT_SOURCE``)."""
    if not isinstance(dead_letter, dict) or dead_letter.get("schema") != DEAD_LETTER_V1:
        return Decision("not_a_dead_letter", "not a synctrail.dead-letter/v1 record")
    topic = dead_letter.get("source_topic")
    if not topic:
        return Decision("no_source_topic", "no source topic (e.g. rejected at the bridge)")
    if topic not in replayable_topics(prefix):
        return Decision("foreign_topic", f"source topic {topic} is not a synctrail topic", topic)
    original, text = dead_letter.get("original"), dead_letter.get("original_text")
    if original is not None:
        value = dumps(original)
    elif isinstance(text, str):
        value = text.encode()
    else:
        return Decision("no_original", "the original record was not kept", topic)
    key = dead_letter.get("key")
    return Decision(
        "send",
        str(dead_letter.get("reason") or ""),
        topic,
        key.encode() if isinstance(key, str) else None,
        value,
        replay_headers(dead_letter, topic, prefix, source),
    )


def describe(decision: Decision, partition: int, offset: int, dry_run: bool) -> str:
    """One line per dead letter: where it came from and what happens to it."""
    where = f"dead-letters[{partition}]@{offset}"
    if not decision.send:
        return f"skip {where}: {decision.reason}"
    verb = "would send" if dry_run else "send"
    key = decision.key.decode(errors="replace") if decision.key is not None else "-"
    assert decision.value is not None
    preview = decision.value[:_PREVIEW_CHARS].decode(errors="replace")
    more = "…" if len(decision.value) > _PREVIEW_CHARS else ""
    return (
        f"{verb} {where} → {decision.topic} key={key} ({len(decision.value)} bytes; "
        f"failed: {decision.reason}): {preview}{more}"
    )


async def _topic_exists(settings: DeadLetterReplaySettings, topic: str) -> bool:
    admin = AIOKafkaAdminClient(**admin_args(settings, request_timeout_ms=10000))
    await admin.start()
    try:
        return topic in set(await admin.list_topics())
    finally:
        await admin.close()


async def replay(
    settings: DeadLetterReplaySettings,
    *,
    dry_run: bool = False,
    from_beginning: bool = False,
    out: TextIO = sys.stdout,
) -> Counter[str]:
    """Replay dead letters; returns counts by outcome (``sent``/``would_send``/skip reasons)."""
    topic = DEAD_LETTERS.address(settings.topic_prefix)
    if not await _topic_exists(settings, topic):
        raise LookupError(f"topic {topic} does not exist (is SYNCTRAIL_TOPIC_PREFIX right?)")
    consumer = AIOKafkaConsumer(**reader_args(settings, group_id=settings.dead_letter_replay_group))
    producer = AIOKafkaProducer(**producer_args(settings, acks="all"))
    await consumer.start()
    await producer.start()
    counts: Counter[str] = Counter()
    source = settings.ce_source()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        end = await log_end_offsets(consumer, tps)
        pending = []
        for tp in tps:  # records that arrive after we started: the next run takes them
            async for batch in read_to_end(consumer, [tp], ends=end, fetch_ms=1000):
                for message in batch:
                    decision = decide(loads_or_none(message.value), settings.topic_prefix, source)
                    print(describe(decision, tp.partition, message.offset, dry_run), file=out)
                    if not decision.send:
                        counts[decision.outcome] += 1
                    elif dry_run:
                        counts["would_send"] += 1
                    else:
                        pending.append(
                            await producer.send(
                                decision.topic,
                                decision.value,
                                key=decision.key,
                                headers=decision.headers,
                            )
                        )
                        counts["sent"] += 1
        # Commit progress only once every replayed record is acknowledged (acks=all).
        await asyncio.gather(*pending)
        if not dry_run and tps:
            await consumer.commit({tp: end[tp] for tp in tps})
    finally:
        await producer.stop()
        await consumer.stop()
    return counts


def summary(counts: Counter[str], dry_run: bool) -> str:
    """The closing line: how many were (or would be) sent and why others were skipped."""
    sent = counts["would_send"] if dry_run else counts["sent"]
    skipped = {k: v for k, v in counts.items() if k not in ("sent", "would_send")}
    detail = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    head = f"{'would replay' if dry_run else 'replayed'} {sent} dead letter(s)"
    tail = f", skipped {sum(skipped.values())}" + (f" ({detail})" if detail else "")
    return head + tail + (" — dry run, nothing sent" if dry_run else "")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``synctrail replay-dead-letters``."""
    from streams import logs

    settings = DeadLetterReplaySettings()
    logs.configure(settings.log_level, settings.log_format)
    dry_run = bool(getattr(args, "dry_run", False))
    from_beginning = bool(getattr(args, "from_beginning", False))
    try:
        counts = asyncio.run(replay(settings, dry_run=dry_run, from_beginning=from_beginning))
    except LookupError as exc:
        print(f"replay-dead-letters: {exc}", file=sys.stderr)
        return 1
    print(summary(counts, dry_run))
    return 0
