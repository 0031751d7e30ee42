"""The Faust corrections (streams.faust_fixes), against the real embedded broker."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from connectors.broker import ensure_topics
from streams import faust_fixes
from streams.app import build
from streams.faust_fixes import true_end_offsets
from streams.settings import WorkerSettings
from streams.topics import SYNC_EVENTS


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
