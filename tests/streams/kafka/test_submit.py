"""Records submitted one at a time (the bridge's way), against a scripted producer: what is
handed over when, and how failures spread."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from streams.kafka.produce import BatchFailed, BatchingProducer
from tests.support import wait_for


class _Builder:
    """Stands in for aiokafka's BatchBuilder: takes up to ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: list[bytes] = []

    def append(self, *, timestamp: Any, key: bytes, value: bytes, headers: Any) -> object | None:
        if len(self.values) >= self.capacity:
            return None
        self.values.append(value)
        return object()


@dataclass
class _Sent:
    partition: int
    values: list[bytes]
    ack: asyncio.Future[Any]


@dataclass
class _Meta:
    offset: int


class _Client:
    async def add_topic(self, topic: str) -> None:
        pass


@dataclass
class _Producer:
    """Records every batch handed over; the test acknowledges each one by hand."""

    capacity: int = 100
    sent: list[_Sent] = field(default_factory=list)
    client: _Client = field(default_factory=_Client)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> _Builder:
        return _Builder(self.capacity)

    async def send_batch(self, builder: _Builder, topic: str, *, partition: int) -> Any:
        ack = asyncio.get_running_loop().create_future()
        self.sent.append(_Sent(partition, builder.values, ack))
        return ack


class _Batcher:
    """The bridge's use: one topic, records submitted one at a time."""

    def __init__(self, producer: _Producer) -> None:
        self.batches = BatchingProducer(producer)  # type: ignore[arg-type]
        self.fail_all = self.batches.fail_all
        self.drain = self.batches.drain
        self.abort = self.batches.abort
        self.oldest_unacknowledged = self.batches.oldest_unacknowledged

    def submit(self, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        return self.batches.submit("t.sync-events", key, value)


async def _batcher(producer: _Producer) -> _Batcher:
    batcher = _Batcher(producer)
    assert await batcher.batches.partition_count("t.sync-events") == 1
    return batcher


async def test_records_arriving_during_a_round_trip_go_together_once_it_is_acknowledged() -> None:
    producer = _Producer()
    batcher = await _batcher(producer)
    first = batcher.submit(b"argocd/a", b"1")
    await wait_for(lambda: len(producer.sent) == 1, what="the first batch")
    later = []
    for value in (b"2", b"3", b"4"):
        later.append(batcher.submit(b"argocd/a", value))
        await asyncio.sleep(0)  # requests arrive over several turns of the loop, not at once
    producer.sent[0].ack.set_result(_Meta(offset=10))
    assert await first == (0, 10)
    await wait_for(lambda: len(producer.sent) == 2, what="the second batch")
    assert producer.sent[1].values == [b"2", b"3", b"4"]
    producer.sent[1].ack.set_result(_Meta(offset=11))
    assert [await fut for fut in later] == [(0, 11), (0, 12), (0, 13)]
    await batcher.drain()
    assert len(producer.sent) == 2 and batcher.oldest_unacknowledged() is None


async def test_a_full_batch_is_followed_by_another_in_order() -> None:
    producer = _Producer(capacity=2)
    batcher = await _batcher(producer)
    futures = [batcher.submit(b"argocd/a", str(i).encode()) for i in range(5)]
    for offset in (0, 2, 4):
        await wait_for(lambda: any(not s.ack.done() for s in producer.sent), what="a batch")
        producer.sent[-1].ack.set_result(_Meta(offset=offset))
    assert [s.values for s in producer.sent] == [[b"0", b"1"], [b"2", b"3"], [b"4"]]
    assert [await fut for fut in futures] == [(0, i) for i in range(5)]


async def test_a_refused_batch_fails_its_own_records_only() -> None:
    producer = _Producer()
    batcher = await _batcher(producer)
    first = batcher.submit(b"argocd/a", b"1")
    await wait_for(lambda: len(producer.sent) == 1, what="the first batch")
    second = batcher.submit(b"argocd/a", b"2")
    producer.sent[0].ack.set_exception(KafkaTimeoutError("no answer"))
    with pytest.raises(BatchFailed, match="KafkaTimeoutError"):
        await first
    await wait_for(lambda: len(producer.sent) == 2, what="the second batch")
    producer.sent[1].ack.set_result(_Meta(offset=7))
    assert await second == (0, 7)


async def test_fail_all_fails_every_waiting_record_at_once_and_hands_nothing_more_over() -> None:
    producer = _Producer()
    batcher = await _batcher(producer)
    submitted = time.monotonic()
    in_flight = batcher.submit(b"argocd/a", b"1")
    await wait_for(lambda: len(producer.sent) == 1, what="the first batch")
    queued = batcher.submit(b"argocd/a", b"2")
    oldest = batcher.oldest_unacknowledged()
    assert oldest is not None and submitted <= oldest <= time.monotonic()

    batcher.fail_all("kafka unreachable")
    assert in_flight.done() and queued.done()
    for fut in (in_flight, queued, batcher.submit(b"argocd/b", b"3")):
        with pytest.raises(BatchFailed, match="kafka unreachable"):
            await fut
    producer.sent[0].ack.set_result(_Meta(offset=0))  # a late acknowledgement changes nothing
    await batcher.drain()
    assert len(producer.sent) == 1


async def test_abort_fails_the_batch_in_flight_and_stops_the_flusher() -> None:
    producer = _Producer()
    batcher = await _batcher(producer)
    in_flight = batcher.submit(b"argocd/a", b"1")
    await wait_for(lambda: len(producer.sent) == 1, what="the first batch")
    await batcher.abort()
    with pytest.raises(BatchFailed, match="producer retired"):
        await in_flight
    assert batcher.oldest_unacknowledged() is None
