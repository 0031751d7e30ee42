"""``streams.replay``: the source header on every output, and reading a partition's outputs back
before its events are decided again (against the embedded broker)."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.broker import EmbeddedBroker
from streams.agents import Batch, _equal_partition_counts
from streams.kafka.produce import OutputProducer
from streams.kafka.setup import ensure_topics
from streams.replay import SOURCE_HEADER, ReplayGuard, parse_source, record_source, source_value


def test_an_events_outputs_are_numbered_per_topic_and_those_written_are_skipped() -> None:
    batch = Batch()
    batch.begin(3, 41)
    batch.emit("deployments", "argocd/a", {"n": 1})
    batch.emit("notifications", "argocd/a", {"n": 2})
    batch.emit("notifications", "argocd/a", {"n": 3})
    assert [source for _, _, _, source, _ in batch.outputs] == [b"3:41:0", b"3:41:0", b"3:41:1"]
    batch.begin(3, 42, {("notifications", 42, 1), ("deployments", 41, 0)})
    batch.emit("deployments", "argocd/a", {"n": 4})
    batch.emit("notifications", "argocd/a", {"n": 5})
    batch.emit("notifications", "argocd/a", {"n": 6})  # already written: not again
    assert [source for _, _, _, source, _ in batch.outputs][3:] == [b"3:42:0", b"3:42:0"]
    assert batch.skipped == 1


def test_a_source_header_reads_back_and_anything_else_is_none() -> None:
    assert parse_source(source_value(7, 123456, 2)) == (7, 123456, 2)
    assert parse_source(b"7:x:2") is None and parse_source(None) is None
    assert record_source([("other", b"1"), (SOURCE_HEADER, b"1:2:3")]) == (1, 2, 3)
    assert record_source(None) is None


async def test_reading_back_stops_at_the_first_older_record_and_keeps_what_is_newer(
    broker: EmbeddedBroker, prefix: str
) -> None:
    await ensure_topics(broker.bootstrap, prefix, partitions=8)
    topic = f"{prefix}deployments"
    outputs = OutputProducer(broker.bootstrap, max_batch_bytes=16384)
    await outputs.start()
    try:
        # partition 2: a record without a source (an older synctrail), then the outputs of
        # the events at offsets 5..1004
        records = [(topic, 2, b"k", b'{"v":0}', None)]
        records += [(topic, 2, b"k", b'{"v":1}', source_value(2, s, 0)) for s in range(5, 1005)]
        await outputs.send_placed(records)
    finally:
        await outputs.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 2)
        consumer.assign([tp])
        first = (await consumer.getmany(tp, timeout_ms=5000))[tp]
        assert first[0].value == b'{"v":0}' and not first[0].headers  # values unchanged
        assert first[1].value == b'{"v":1}' and dict(first[1].headers)[SOURCE_HEADER] == b"2:5:0"
    finally:
        await consumer.stop()

    guard = ReplayGuard(broker.bootstrap, [topic, f"{prefix}notifications"])
    assert guard.needs_reading(2, 1000)
    await guard.read_back({2: 1000})
    assert not guard.needs_reading(2, 1001) and guard.needs_reading(2, 999)
    assert guard.written_for(2, 1000) == {(topic, s, 0) for s in range(1000, 1005)}
    assert guard.written_for(2, 1005) is None  # past the highest: dropped
    await guard.read_back({2: 10})  # further back: growing windows down to source 9
    assert guard.written_for(2, 10) == {(topic, s, 0) for s in range(10, 1005)}
    await guard.read_back({5: 0})  # an empty partition
    assert guard.written_for(5, 0) is None
    guard.on_assignment()
    assert guard.needs_reading(2, 2000)


async def test_output_topics_with_another_partition_count_turn_the_guard_off_with_a_warning(
    broker: EmbeddedBroker, prefix: str, caplog
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{prefix}sync-events", 4, 1)])
    finally:
        await admin.close()
    await ensure_topics(broker.bootstrap, prefix, partitions=8)  # the others: 8
    topology = SimpleNamespace(
        sync_events=SimpleNamespace(get_topic_name=lambda: f"{prefix}sync-events"),
        topic=lambda name: f"{prefix}{name}",
    )
    outputs = OutputProducer(broker.bootstrap, max_batch_bytes=16384)
    await outputs.start()
    try:
        assert not await _equal_partition_counts(topology, outputs)  # type: ignore[arg-type]
    finally:
        await outputs.stop()
    assert "differ in partition count" in caplog.text
