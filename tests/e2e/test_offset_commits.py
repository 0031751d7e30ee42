"""With at_least_once the worker commits its consumed offsets as soon as their events are
durable, not only on Faust's commit timer (every 2.8 s: on a backlog, thousands of events that
a restarted worker decides again). Both brokers."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.offsets import log_end_offsets
from tests.e2e.backlog import committed_offsets, produce_backlog, wait_caught_up
from tests.support import wait_for


async def _sync_events_ends(bootstrap: str, prefix: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(f"{prefix}sync-events", p) for p in range(8)]
        consumer.assign(tps)
        return {tp.partition: end for tp, end in (await log_end_offsets(consumer, tps)).items()}
    finally:
        await consumer.stop()


async def test_offsets_are_committed_once_their_events_are_acknowledged(
    broker, topics, start_worker
):
    """Faust's commit timer is set far beyond the test: only the commits that follow each
    written batch can move the group (before them, it stayed at nothing committed)."""
    await produce_backlog(broker.bootstrap, topics)
    ends = await _sync_events_ends(broker.bootstrap, topics)
    worker = start_worker(SYNCTRAIL_WORKER_COMMIT_INTERVAL_S="3600")
    group = worker.env["SYNCTRAIL_WORKER_ID"]
    await worker.wait_ready()
    await wait_caught_up(broker.bootstrap, topics, worker, dict.fromkeys(range(8), 0))

    seen: dict[int, int] = {}

    async def committed_to_the_end() -> bool:
        seen.update(await committed_offsets(broker.bootstrap, group, topics))
        return seen == ends

    try:
        await wait_for(committed_to_the_end, timeout=60, interval=0.5, what="the commits")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: committed {seen}, ends {ends}") from None
