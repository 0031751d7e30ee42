"""Shared test helpers: real broker access, subprocesses, waiting on conditions with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.domain import cloudevents, records
from streams.kafka.offsets import read_to_end, topic_partitions
from streams.kafka.topics import ALL_TOPICS, CDEVENTS, SOURCE_HEADER

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(
    os.environ.get("SYNCTRAIL_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures")
)

T = TypeVar("T")


def load_expected() -> list[dict[str, Any]]:
    """The fixtures' oracle: one entry per file in delivery order."""
    data = orjson.loads((SHARED_FIXTURES / "expected.json").read_bytes())
    return list(data["payloads"])


async def wait_for(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if asyncio.iscoroutine(last) or isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")
        await asyncio.sleep(interval)


async def wait_for_log_record(
    process: Any, message: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """The first JSON log record of ``process`` (anything with ``log()``) whose message is
    ``message``, once it was written."""

    def find() -> dict[str, Any] | None:
        for line in process.log().splitlines():
            if line.startswith("{"):
                record = orjson.loads(line)
                if record.get("msg") == message:
                    return dict(record)
        return None

    return await wait_for(find, timeout=timeout, what=f"log record {message!r}")


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record with its JSON value decoded (``None`` for tombstones)."""

    key: str | None
    partition: int
    offset: int
    value: Any
    raw: bytes | None
    #: the record's headers, in order (CloudEvents' and ``synctrail-source``)
    headers: tuple[tuple[str, bytes], ...] = ()


async def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Record]:
    """Every committed record currently on ``topic`` (all partitions, from the beginning), no
    group; ``read_committed`` like synctrail's readers (the same as read_uncommitted where
    nothing is written in transactions). ``timeout`` is a deadline for reaching the end (a
    loaded machine with a fresh consumer group coordinator can take seconds), not a wait."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        try:
            async for msgs in read_to_end(consumer, tps, timeout_s=timeout, fetch_ms=200):
                for m in msgs:
                    records.append(
                        Record(
                            key=m.key.decode() if m.key is not None else None,
                            partition=m.partition,
                            offset=m.offset,
                            value=orjson.loads(m.value) if m.value is not None else None,
                            raw=m.value,
                            headers=tuple(m.headers or ()),
                        )
                    )
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from exc
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        await consumer.stop()


async def wait_for_records(
    bootstrap: str, topic: str, count: int, *, timeout: float = 60.0
) -> list[Record]:
    """Wait until ``topic`` holds at least ``count`` records and return them all."""

    async def enough() -> list[Record] | None:
        records = await read_topic(bootstrap, topic)
        return records if len(records) >= count else None

    return await wait_for(enough, timeout=timeout, interval=0.2, what=f"{count} records on {topic}")


async def produce(
    bootstrap: str,
    topic: str,
    items: list[tuple[bytes | None, bytes | None]],
    *,
    batched: bool = False,
) -> None:
    """Produce (key, value) pairs with acks=all, in order.

    ``batched`` sends without waiting for each ack, so records share batches as they do
    behind the bridge (per-partition order still holds: one producer, one request in flight).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        if batched:
            sent = [await producer.send(topic, value, key=key) for key, value in items]
            await asyncio.gather(*sent)
            return
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


class Service:
    """A ``synctrail`` subcommand in a child process, with its own env and a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connectors.cli", *self.args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


async def assert_cloudevents_headers_on_every_record(
    bootstrap: str, prefix: str, names: Sequence[str] | None = None
) -> dict[str, int]:
    """Every record of every synctrail topic carries its CloudEvents binary-mode headers, the
    ones :func:`streams.domain.cloudevents.headers` gives for its value as read back (so the
    ``ce_id`` is the function of the fact, not of the write), and on ``cdevents`` the ones
    :func:`~streams.domain.cloudevents.cdevent_headers` gives for the CDEvent (its context,
    whose source is the installation's); only the topics ``names`` when given; returns the
    records per topic."""
    source = cloudevents.default_source(prefix)
    counts: dict[str, int] = {}
    for spec in ALL_TOPICS:
        if names is not None and spec.name not in names:
            continue  # e.g. a topic the test itself wrote to
        found = await read_topic(bootstrap, spec.address(prefix))
        for r in found:
            where = f"{spec.address(prefix)}[{r.partition}]@{r.offset}"
            got = dict(r.headers)
            if spec is CDEVENTS:
                assert r.value["context"]["source"] == source, where
                assert r.key == r.value["subject"]["id"], where
                want = dict(cloudevents.cdevent_headers(r.value))
            else:
                schema = r.value["schema"] if isinstance(r.value, dict) else spec.schema
                n = r.partition if schema == records.POLICY_CHECK_V1 else 0
                want = dict(cloudevents.headers(schema, r.value, r.key, source, n=n))
            if r.value is None:  # a tombstone: its id and time are when it was deleted
                want.pop("ce_id"), got.pop("ce_id", None)
                want.pop("ce_time", None), got.pop("ce_time", None)
            got.pop(SOURCE_HEADER, None)  # the worker's (streams.replay)
            assert got == want, where
            assert r.value is None or "ce_time" in got, where
        counts[spec.name] = len(found)
    return counts
