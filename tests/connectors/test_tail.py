"""``synctrail tail``: a topic's records as JSON lines."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from connectors.broker import EmbeddedBroker
from connectors.tail import TopicNotFound, full_topic_name, tail
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS
from tests.support import produce, wait_for


def _lines(out: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_short_names_get_the_prefix() -> None:
    assert full_topic_name("deployments", "synctrail.") == "synctrail.deployments"
    assert full_topic_name("synctrail.deployments", "synctrail.") == "synctrail.deployments"
    assert full_topic_name("other-topic", "synctrail.") == "other-topic"


async def test_from_beginning_prints_every_record_as_json_lines(
    broker: EmbeddedBroker, topics: str
) -> None:
    topic = f"{topics}deployments"
    items = [(f"argocd/app-{i % 3}".encode(), orjson.dumps({"n": i})) for i in range(30)]
    items.append((b"argocd/app-0", b"not json"))
    items.append((b"argocd/app-0", None))
    await produce(broker.bootstrap, topic, items)
    out = io.StringIO()
    assert await tail(broker.bootstrap, topic, from_beginning=True, out=out) == 32
    lines = _lines(out)
    assert {tuple(sorted(line)) for line in lines} == {("key", "offset", "partition", "value")}
    assert sorted(line["value"]["n"] for line in lines if isinstance(line["value"], dict)) == list(
        range(30)
    )
    app0 = [line for line in lines if line["key"] == "argocd/app-0"]
    assert [line["offset"] for line in app0] == sorted(line["offset"] for line in app0)
    assert app0[-2]["value"] == "not json" and app0[-1]["value"] is None


async def test_default_prints_the_last_records_of_each_partition(
    broker: EmbeddedBroker, topics: str
) -> None:
    topic = f"{topics}metrics"
    await produce(broker.bootstrap, topic, [(b"k", orjson.dumps({"n": i})) for i in range(25)])
    out = io.StringIO()
    assert await tail(broker.bootstrap, topic, out=out) == 10
    assert [line["value"]["n"] for line in _lines(out)] == list(range(15, 25))


async def test_follow_prints_new_records_as_they_arrive(
    broker: EmbeddedBroker, topics: str
) -> None:
    topic = f"{topics}notifications"
    out = io.StringIO()
    task = asyncio.create_task(tail(broker.bootstrap, topic, follow=True, out=out))
    try:
        # Each record is produced only after the previous one was printed: tail is following.
        for i in range(3):
            await produce(broker.bootstrap, topic, [(b"k", orjson.dumps({"n": i}))])
            await wait_for(lambda n=i: len(_lines(out)) == n + 1, timeout=20, what=f"record {i}")
        assert [line["value"]["n"] for line in _lines(out)] == [0, 1, 2]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unknown_topic_is_reported(broker: EmbeddedBroker, prefix: str) -> None:
    with pytest.raises(TopicNotFound):
        await tail(
            broker.bootstrap, f"{prefix}no-such-topic", from_beginning=True, out=io.StringIO()
        )


async def test_records_of_an_aborted_transaction_are_never_printed(apache_kafka, prefix) -> None:
    # what an exactly_once worker killed mid-transaction leaves on its output topics
    await ensure_topics(apache_kafka.bootstrap, prefix, partitions=1, topics=[DEPLOYMENTS])
    topic = DEPLOYMENTS.address(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=apache_kafka.bootstrap, transactional_id=topic)
    await producer.start()
    try:
        for n, commit in ((1, True), (2, False), (3, True)):
            await producer.begin_transaction()
            await producer.send_and_wait(topic, orjson.dumps({"n": n}), key=b"argocd/app")
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    out = io.StringIO()
    assert await tail(apache_kafka.bootstrap, topic, from_beginning=True, out=out) == 2
    assert [line["value"]["n"] for line in _lines(out)] == [1, 3]
