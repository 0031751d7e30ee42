"""The Faust corrections (streams.faust_fixes), against the real brokers."""

from __future__ import annotations

import inspect

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import READ_COMMITTED
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import faust_fixes
from streams.faust_fixes import true_end_offsets
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import SYNC_EVENTS, TopicSpec
from streams.settings import WorkerSettings
from streams.topology import build


async def _send_one_batch(bootstrap: str, topic: str, partition: int, count: int) -> None:
    """``count`` records in a single record batch: the case Tansu's ListOffsets gets wrong."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(count):
            assert batch.append(key=b"k", value=f"v{i}".encode(), timestamp=None) is not None
        batch.close()
        future = await producer.send_batch(batch, topic, partition=partition)
        await future
    finally:
        await producer.stop()


async def test_end_offsets_count_every_record_of_the_last_batch(broker, prefix):
    await ensure_topics(broker.bootstrap, prefix, partitions=2, topics=[SYNC_EVENTS])
    topic = SYNC_EVENTS.address(prefix)
    await _send_one_batch(broker.bootstrap, topic, 0, 1)
    await _send_one_batch(broker.bootstrap, topic, 0, 5)

    ends = await true_end_offsets([broker.bootstrap], [TP(topic, 0), TP(topic, 1)])

    assert ends == {TP(topic, 0): 6, TP(topic, 1): 0}


async def test_end_offsets_of_no_partitions_is_empty(broker):
    assert await true_end_offsets([broker.bootstrap], []) == {}


class _RecordingConsumer:
    """Stands in for Faust's consumer; records the calls recovery makes, in order."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.calls: list[str] = []

    def assignment(self) -> set[TP]:
        return self._assignment

    async def perform_seek(self) -> None:
        self.calls.append("perform_seek")

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append(f"resume_partitions {sorted(tp.partition for tp in tps)}")

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


class _RecordingFetcher:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def maybe_start(self) -> None:
        self.calls.append("fetcher started")


async def test_recovery_seeks_stream_partitions_before_it_resumes_them(tmp_path):
    topology = build(
        WorkerSettings(worker_id="order-test", topic_prefix="order.", worker_data_dir=tmp_path)
    )
    app = topology.app
    source = topology.sync_events.get_topic_name()
    changelog = topology.apps.changelog_topic.get_topic_name()
    consumer = _RecordingConsumer({TP(source, 0), TP(source, 1), TP(changelog, 0)})
    app._consumer = consumer  # Faust caches its consumer here
    app._fetcher = _RecordingFetcher(consumer.calls)

    await app.tables.recovery.on_recovery_completed(app.consumer_generation_id)

    # resuming first would let the fetcher deliver records from the old position
    assert consumer.calls == [
        "perform_seek",
        "resume_partitions [0, 1]",
        "resume_flow",
        "fetcher started",
    ]
    assert app.tables.recovery.completed.is_set()
    assert not app.rebalancing


async def test_a_fetch_gets_a_snapshot_of_the_active_partitions_never_the_live_set(monkeypatch):
    handed: list[set[TP] | None] = []

    async def fetch(self: object, active_partitions: set[TP] | None, timeout: float) -> dict:
        handed.append(active_partitions)
        live.clear()  # Faust pausing partitions while the fetch runs in the consumer thread
        return {}

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "getmany", fetch)
    thread = object.__new__(faust_fixes._ConsumerThread)  # no consumer needed for this
    live = {TP("t", 0), TP("t", 1)}

    await thread.getmany(live, 1.0)
    # aiokafka would read an emptied set as "every partition"
    assert handed == [{TP("t", 0), TP("t", 1)}]
    assert handed[0] is not live

    handed.clear()
    assert await thread.getmany(set(), 1.0) == {}
    assert handed == []  # nothing active: no fetch at all


# -- fix 4: exactly-once without Faust's transactions -------------------------------------------


def _app(tmp_path, guarantee: str):
    return build(
        WorkerSettings(
            worker_id=f"eos-{guarantee}",
            topic_prefix="eos.",
            worker_data_dir=tmp_path,
            processing_guarantee=guarantee,
        )
    ).app


async def test_a_transactional_app_reads_committed_and_leaves_offset_commits_to_its_transactions(
    tmp_path,
):
    transactional, plain = _app(tmp_path, "exactly_once"), _app(tmp_path, "at_least_once")
    for app, isolation in ((transactional, "read_committed"), (plain, "read_uncommitted")):
        thread = app.consumer._thread  # Faust's consumer thread (a faust_fixes._ConsumerThread)
        assert isinstance(thread, faust_fixes._ConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        assert consumer._isolation_level == isolation
        assert not app.in_transaction  # Faust's own exactly_once stays off

    # no consumer is running: a real commit would fail, the transactional app's is skipped
    tp = TP("eos.sync-events", 0)
    assert await transactional.consumer._thread._commit({tp: 5}) is True
    assert tp in transactional.consumer._thread.tp_last_committed_at
    with pytest.raises(ConsumerNotStarted):
        await plain.consumer._thread._commit({tp: 5})


async def test_aiokafka_takes_the_isolation_level_when_the_consumer_starts(broker):
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    consumer._isolation_level = "read_committed"  # what fix 4 sets after Faust built it
    await consumer.start()
    try:
        assert consumer._fetcher._isolation_level == READ_COMMITTED
        await consumer.topics()  # (aiokafka's stop right after start trips on its own task)
    finally:
        await consumer.stop()


async def test_assignment_hooks_run_before_faust_handles_the_assignment(tmp_path, monkeypatch):
    calls: list[str] = []

    async def faust_handles(self: object, assigned: set[TP], generation_id: int = 0) -> None:
        calls.append(f"faust {sorted(tp.partition for tp in assigned)} {generation_id}")

    assert list(inspect.signature(faust.App._on_partitions_assigned).parameters) == [
        "self",
        "assigned",
        "generation_id",
    ]
    # Faust hands this method to its consumer as the assignment callback
    assert "on_partitions_assigned=self._on_partitions_assigned" in inspect.getsource(
        faust.App._new_consumer
    )
    monkeypatch.setattr(faust.App, "_on_partitions_assigned", faust_handles)
    app = _app(tmp_path, "at_least_once")

    async def hook(assigned: set[TP]) -> None:
        calls.append(f"hook {sorted(tp.partition for tp in assigned)}")

    app.before_assignment.append(hook)
    await app._on_partitions_assigned({TP("t", 3)}, 7)
    assert calls == ["hook [3]", "faust [3] 7"]


async def test_recovery_of_a_transactional_changelog_ends_at_its_last_committed_record(
    apache_kafka, prefix
):
    topic = f"{prefix}changelog"
    await ensure_topics(
        apache_kafka.bootstrap, prefix, partitions=3, topics=[TopicSpec("changelog", "", "")]
    )
    producer = AIOKafkaProducer(bootstrap_servers=apache_kafka.bootstrap, transactional_id=topic)
    await producer.start()
    try:
        async with producer.transaction():  # partition 0: offsets 0, 1, marker 2
            for value in (b"a", b"b"):
                await producer.send_and_wait(topic, value, key=b"k", partition=0)
        await producer.begin_transaction()  # offset 3 on 0 and 0 on 1, then abort markers
        await producer.send_and_wait(topic, b"aborted", key=b"k", partition=0)
        await producer.send_and_wait(topic, b"aborted", key=b"k", partition=1)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    await _send_one_batch(apache_kafka.bootstrap, topic, 2, 3)  # not transactional: 0, 1, 2

    tps = [TP(topic, 0), TP(topic, 1), TP(topic, 2)]
    ends = await faust_fixes.committed_end_offsets([apache_kafka.bootstrap], tps)

    # Faust recovers up to end - 1, the last record it will be given
    assert ends == {TP(topic, 0): 2, TP(topic, 1): 0, TP(topic, 2): 3}
    assert await true_end_offsets([apache_kafka.bootstrap], tps) == {
        TP(topic, 0): 5,  # markers take offsets: recovery would wait for offset 4 forever
        TP(topic, 1): 2,
        TP(topic, 2): 3,
    }
