"""``synctrail tail TOPIC [--from-beginning] [--follow]``: a topic's records as JSON lines.

Each line is ``{"key", "partition", "offset", "value"}``; the value is decoded JSON when it is
JSON, text otherwise, ``null`` for a tombstone. Without ``--from-beginning`` it starts with the
last 10 records of each partition (like ``tail``); without ``--follow`` it stops at the end of
the topic as it was when it started. No consumer group is used, so nothing is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from streams.kafka.client import Connection, reader_args
from streams.kafka.offsets import log_end_offsets, read_to_end, topic_partitions
from streams.kafka.topics import ALL_TOPICS
from streams.settings import CommonSettings

LAST_PER_PARTITION = 10


class TopicNotFound(Exception):
    """The topic does not exist on the broker."""


def full_topic_name(topic: str, prefix: str) -> str:
    """``deployments`` -> ``<prefix>deployments``; anything else is taken as the full name."""
    if topic in {spec.name for spec in ALL_TOPICS}:
        return f"{prefix}{topic}"
    return topic


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode(errors="replace")


def record_line(record: ConsumerRecord[bytes, bytes]) -> str:
    """One output line for a consumed record."""
    key = record.key.decode(errors="replace") if record.key is not None else None
    return orjson.dumps(
        {
            "key": key,
            "partition": record.partition,
            "offset": record.offset,
            "value": _decode(record.value),
        }
    ).decode()


async def tail(
    bootstrap: Connection,
    topic: str,
    *,
    from_beginning: bool = False,
    follow: bool = False,
    out: TextIO = sys.stdout,
    last: int = LAST_PER_PARTITION,
) -> int:
    """Print ``topic``'s records; returns the number printed (runs until cancelled if following)."""
    consumer = AIOKafkaConsumer(**reader_args(bootstrap))
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            raise TopicNotFound(topic)
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await log_end_offsets(consumer, tps)
        for tp in tps:
            start = begin[tp] if from_beginning else max(begin[tp], end[tp] - last)
            consumer.seek(tp, start)
        printed = 0
        if not follow:
            # Stop at the end as of now; print partition by partition in offset order.
            batch: list[ConsumerRecord[bytes, bytes]] = []
            async for records in read_to_end(consumer, tps, ends=end):
                batch += records
            for record in sorted(batch, key=lambda r: (r.partition, r.offset)):
                print(record_line(record), file=out, flush=False)
                printed += 1
            out.flush()
            return printed
        while True:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for record in records:
                    print(record_line(record), file=out)
                    printed += 1
            if got:
                out.flush()
    finally:
        await consumer.stop()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``synctrail tail``."""
    settings = CommonSettings()
    topic = full_topic_name(args.topic, settings.topic_prefix)
    try:
        asyncio.run(
            tail(
                settings,
                topic,
                from_beginning=args.from_beginning,
                follow=args.follow,
            )
        )
    except TopicNotFound:
        print(f"synctrail tail: topic {topic!r} does not exist", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    return 0
