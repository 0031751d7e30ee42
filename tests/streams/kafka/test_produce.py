"""The worker's output producer, against the real embedded broker."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from streams.kafka.produce import OutputProducer, kafka_partition
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS, METRICS, TopicSpec
from tests.support import read_topic


def test_partition_is_the_kafka_default_for_keyed_records():
    default = DefaultPartitioner()
    for key in (b"argocd/guestbook", b"team-a/api", b"x"):
        assert kafka_partition(key, 8) == default(key, list(range(8)), list(range(8)))


async def test_every_record_arrives_in_order_on_its_key_partition(broker, prefix):
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS, METRICS])
    deployments, metrics = DEPLOYMENTS.address(prefix), METRICS.address(prefix)
    records = [
        (topic, f"argocd/app-{i % 13}".encode(), b'{"n": %d, "pad": "%s"}' % (i, b"x" * 900))
        for i in range(400)
        for topic in (deployments, metrics)
    ]
    # small batches: the records of one partition span several of them
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=4096)
    await outputs.start()
    try:
        last = await outputs.send_placed(await outputs.place(records))
    finally:
        await outputs.stop()

    for topic in (deployments, metrics):
        seen = await read_topic(broker.bootstrap, topic)
        assert len(seen) == 400
        assert {tp: offset for tp, offset in last.items() if tp[0] == topic} == {
            (topic, r.partition): r.offset for r in seen
        }
        per_key: dict[str, list[int]] = {}
        for record in seen:  # sorted by partition and offset
            assert record.partition == kafka_partition(record.key.encode(), 8)
            per_key.setdefault(record.key, []).append(record.value["n"])
        for key, numbers in per_key.items():
            app = int(key.rsplit("-", 1)[1])
            assert numbers == [n for n in range(400) if n % 13 == app]


async def test_nothing_to_send_returns_at_once(broker):
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=16384)
    await outputs.start()
    try:
        assert await outputs.send_placed(await outputs.place([])) == {}
    finally:
        await outputs.stop()


async def test_placed_records_go_to_their_partition_and_report_each_last_offset(broker, prefix):
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS])
    topic = DEPLOYMENTS.address(prefix)
    # partition 5 whatever the key hashes to (a changelog follows its source partition)
    records = [(topic, 5, f"argocd/app-{i}".encode(), b'{"n": %d}' % i) for i in range(30)]
    records += [(topic, 2, b"argocd/other", b'{"n": 100}')]
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=256)  # several batches
    await outputs.start()
    try:
        first = await outputs.send_placed(records)
        again = await outputs.send_placed(records[:3])
    finally:
        await outputs.stop()

    assert first == {(topic, 5): 29, (topic, 2): 0}
    assert again == {(topic, 5): 32}
    seen = await read_topic(broker.bootstrap, topic)
    on_5 = [r.value["n"] for r in seen if r.partition == 5]
    assert on_5 == [*range(30), 0, 1, 2]
    assert [(r.partition, r.offset) for r in seen if r.value["n"] == 100] == [(2, 0)]


async def test_records_handed_over_before_earlier_ones_are_acknowledged_keep_their_order(
    broker, prefix
):
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS])
    topic = DEPLOYMENTS.address(prefix)
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=2048)  # several batches each
    await outputs.start()
    try:
        acknowledgements = []
        for start in (0, 100, 200):  # three agent batches, none awaited before the next
            records = [
                (topic, f"argocd/app-{i % 7}".encode(), b'{"n": %d, "pad": "%s"}' % (i, b"x" * 300))
                for i in range(start, start + 100)
            ]
            acknowledgements.append(await outputs.hand_over(await outputs.place(records)))
        results = [await ack for ack in acknowledgements]
    finally:
        await outputs.stop()

    seen = await read_topic(broker.bootstrap, topic)
    assert len(seen) == 300
    per_key: dict[str, list[int]] = {}
    for record in seen:
        per_key.setdefault(record.key, []).append(record.value["n"])
    for key, numbers in per_key.items():
        app = int(key.rsplit("-", 1)[1])
        assert numbers == [n for n in range(300) if n % 7 == app]
    # every batch has every key: the last one ends each partition
    assert results[-1] == {(topic, r.partition): r.offset for r in seen}


async def test_topics_created_after_start_do_not_make_the_producer_forget_the_others(
    broker, prefix
):
    await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[DEPLOYMENTS, METRICS])
    deployments = DEPLOYMENTS.address(prefix)
    outputs = OutputProducer([broker.bootstrap], max_batch_bytes=16384)
    await outputs.start()  # its start-up metadata knows the topics above
    try:
        await outputs.send_placed(await outputs.place([(deployments, b"argocd/guestbook", b"{}")]))
        # a topic the producer first meets later, as the worker meets its changelog
        later = TopicSpec("apps-changelog", "none", "created after the producer started")
        await ensure_topics(broker.bootstrap, prefix, partitions=8, topics=[later])
        changelog = later.address(prefix)
        await outputs.send_placed([(changelog, 3, b"argocd/guestbook", b"{}")])
        await outputs.producer.client.force_metadata_update()

        assert outputs.producer.client.cluster.partitions_for_topic(deployments) == set(range(8))
        again = await outputs.place([(deployments, b"argocd/guestbook", b"{}")])
        assert await outputs.send_placed(again) == {(deployments, again[0][1]): 1}
    finally:
        await outputs.stop()
