"""A 5,000-event backlog over 2,000 apps, and what a worker killed on it leaves on the output
topics: shared by ``tests/e2e/test_exactly_once.py`` and the chaos scenarios
(``tests.chaos.worker``). Works on both brokers (true end offsets on the embedded one)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.domain.policy import load_policy_file
from streams.kafka.offsets import log_end_offsets
from streams.kafka.setup import ensure_topics
from streams.policy_publish import POLICY_CHECK_V1, publish_rules
from tests.e2e.harness import FixtureEvent, Worker, synthetic_events
from tests.support import produce, read_topic, wait_for

APPS, EVENTS = 2000, 5000
OUTPUTS = ("deployments", "notifications", "metrics", "violations", "remediations", "cdevents")
#: every label of the worker's ``synctrail_worker_events_total`` (one count per sync event)
OUTCOMES = ("deployed", "duplicate", "resync", "stale", "replayed", "dead_lettered")
POLICY = "deny:\n  - image: quay.io/acme/sidecar:*\n    reason: sidecars are not allowed\n"
# fields that say when a record was made: a re-emission differs only in those
WHEN = {"timestamp", "latency_seconds"}


def identity(value: Any) -> bytes:
    """What a record says, without when it was made: equal for a re-emitted record."""
    return orjson.dumps(
        {k: v for k, v in value.items() if k not in WHEN and not k.endswith("_at")},
        option=orjson.OPT_SORT_KEYS,
    )


async def produce_backlog(bootstrap: str, prefix: str) -> list[FixtureEvent]:
    """5,000 sync events over 2,000 apps waiting on sync-events, and a deny rule in force."""
    await ensure_topics(bootstrap, prefix, partitions=8)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await publish_rules(producer, prefix, load_policy_file(POLICY))
    finally:
        await producer.stop()
    events = synthetic_events(apps=APPS, deploys=3)[:EVENTS]
    await produce(
        bootstrap,
        f"{prefix}sync-events",
        [(e.key.encode(), e.raw) for e in events],
        batched=True,
    )
    return events


async def processed(bootstrap: str, group: str, prefix: str) -> tuple[int, int]:
    """(sync-events records whose offsets the group committed, records on sync-events)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{prefix}sync-events", p) for p in range(8)]
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) or 0 for tp in tps]
        return sum(committed), sum(ends.values())
    finally:
        await consumer.stop()


async def deployments_written(bootstrap: str, prefix: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{prefix}deployments", p) for p in range(8)]
        consumer.assign(tps)
        return sum((await log_end_offsets(consumer, tps)).values())
    finally:
        await consumer.stop()


async def wait_processed(
    bootstrap: str, prefix: str, share: float, worker: Worker, timeout: float = 180
) -> None:
    """Wait until ``share`` of the backlog is done: committed with exactly_once (each
    transaction commits its offsets); with at_least_once, whose offsets Faust commits every
    2.8 s, until that share of deployments is written (none in transactions: no markers)."""
    group = worker.env["SYNCTRAIL_WORKER_ID"]
    committed_gauge = worker.env["SYNCTRAIL_PROCESSING_GUARANTEE"] == "exactly_once"

    async def reached() -> bool:
        assert worker.process is not None and worker.process.poll() is None, "worker exited"
        if committed_gauge:
            committed, end = await processed(bootstrap, group, prefix)
            return committed >= share * end
        return await deployments_written(bootstrap, prefix) >= share * EVENTS

    await wait_for(reached, timeout=timeout, interval=0.1, what=f"{share:.0%} of the backlog")


async def wait_done(bootstrap: str, prefix: str, worker: Worker, events: int) -> None:
    """Wait until every event is done: its offset committed with exactly_once; with
    at_least_once, its deployment written (Faust's own commits may lag behind the end after a
    rebalance: once for minutes, with both workers idle; not investigated here)."""
    if worker.env["SYNCTRAIL_PROCESSING_GUARANTEE"] == "exactly_once":
        await wait_processed(bootstrap, prefix, 1.0, worker, timeout=240)
        return

    async def all_deployed() -> bool:
        records = await read_topic(bootstrap, f"{prefix}deployments", timeout=60)
        return len({r.value["delivery_id"] for r in records}) >= events

    await wait_for(all_deployed, timeout=240, interval=1.0, what=f"{events} deployments")


async def committed_offsets(bootstrap: str, group: str, prefix: str) -> dict[int, int]:
    """The group's committed offset of every sync-events partition (0 where none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{prefix}sync-events", p) for p in range(8)]
        return {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def wait_caught_up(
    bootstrap: str, prefix: str, worker: Worker, since: dict[int, int], timeout: float = 240
) -> None:
    """Wait until ``worker``, started at the group's committed offsets ``since``, has decided
    every sync event from there and made it durable: its events counter counts each event once
    its batch's outputs and states are acknowledged.

    Only then do its answers reflect every event. The outputs on their topics do not say so:
    a killed worker leaves outputs of events whose states it had not written yet (outputs come
    first), which the next one decides again, and applies, after its recovery and read-back.
    """
    records = await read_topic(bootstrap, f"{prefix}sync-events", timeout=60)
    expected = sum(
        1
        for r in records
        if r.offset >= since[r.partition] and r.value.get("schema") != POLICY_CHECK_V1
    )

    async def decided() -> bool:
        assert worker.process is not None and worker.process.poll() is None, "worker exited"
        counts = [await worker.metric("synctrail_worker_events_total", outcome=o) for o in OUTCOMES]
        return sum(c or 0 for c in counts) >= expected

    what = f"the worker to decide the {expected} events from its start"
    await wait_for(decided, timeout=timeout, interval=0.5, what=what)


async def output_ends(bootstrap: str, prefix: str) -> dict[tuple[str, int], int]:
    """The end offset of every output partition now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{prefix}{name}", p) for name in OUTPUTS for p in range(8)]
        consumer.assign(tps)
        ends = await log_end_offsets(consumer, tps)  # true ends on the embedded broker too
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def duplicates(
    bootstrap: str, prefix: str, kills: list[dict[tuple[str, int], int]]
) -> dict[str, list[int]]:
    """Per output topic, read committed: [records, repeats of an earlier record, then the
    repeats written after each kill (the output partitions' end offsets then are in ``kills``)].
    """
    counts = {}
    for name in OUTPUTS:
        topic = f"{prefix}{name}"
        records = await read_topic(bootstrap, topic, timeout=60)
        seen: set[bytes] = set()
        after_kill = [0] * len(kills)
        for record in records:  # by partition and offset
            said = identity(record.value)
            if said not in seen:
                seen.add(said)
                continue
            for index in reversed(range(len(kills))):
                if record.offset >= kills[index][topic, record.partition]:
                    after_kill[index] += 1
                    break
        counts[name] = [len(records), len(records) - len(seen), *after_kill]
    return counts
