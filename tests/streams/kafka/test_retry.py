"""Doing a Kafka step again until the broker answers (``streams.kafka.retry``).

Real brokers and sockets: a producer started before any broker listens on its port, a broker
started there later. The waits are made short through the helper's arguments, and every test
waits for a condition (a logged retry), never for time to pass.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from connectors.broker import EmbeddedBroker, free_port
from streams.kafka.retry import Stopped, until_kafka_answers
from tests.support import wait_for

SHORT = {"wait_initial": 0.05, "wait_max": 0.2}


def retries(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_a_step_is_done_again_until_a_broker_answers_on_its_address(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.WARNING)
    port = free_port()
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000)
    starting = asyncio.create_task(
        until_kafka_answers(producer.start, extra={"step": "start producer"}, **SHORT)
    )
    broker = EmbeddedBroker(port=port)
    try:
        await wait_for(
            lambda: len(retries(caplog, "kafka not reachable, retrying")) >= 2,
            what="two retries while no broker listens",
        )
        assert not starting.done()
        await broker.start()
        await asyncio.wait_for(starting, 60)
        assert await producer.partitions_for("anything") is not None  # connected for real
    finally:
        starting.cancel()
        await producer.stop()
        broker.stop()
    first = retries(caplog, "kafka not reachable, retrying")[0]
    assert first.step == "start producer"  # type: ignore[attr-defined]
    assert "KafkaConnectionError" in first.error  # type: ignore[attr-defined]
    assert 0.05 <= first.retry_in_s <= 0.1  # type: ignore[attr-defined]


async def test_a_process_stopping_ends_the_wait_between_two_tries_at_once(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.WARNING)
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{free_port()}")
    stop = asyncio.Event()
    # an hour between two tries: only the stop event can end this wait within the test
    starting = asyncio.create_task(
        until_kafka_answers(producer.start, stop=stop, wait_initial=3600, wait_max=3600)
    )
    try:
        await wait_for(lambda: retries(caplog, "kafka not reachable, retrying"), what="a retry")
        stop.set()
        with pytest.raises(Stopped):
            await asyncio.wait_for(starting, 30)
        with pytest.raises(Stopped):  # stopped before the first try: not even tried
            await until_kafka_answers(producer.start, stop=stop)
        assert len(retries(caplog, "kafka not reachable, retrying")) == 1
    finally:
        await producer.stop()


async def test_only_the_errors_named_are_retried(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING)
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a Kafka error")

    with pytest.raises(ValueError, match="not a Kafka error"):
        await until_kafka_answers(refused, **SHORT)
    assert calls == 1

    async def unreachable_twice() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise KafkaConnectionError("down")
        return "written"

    assert (
        await until_kafka_answers(
            lambda: unreachable_twice(),  # returns an awaitable, like durably's steps
            retry_on=(KafkaConnectionError,),
            message="kafka write failed, retrying",
            extra={"write": "posted"},
            **SHORT,
        )
        == "written"
    )
    written = retries(caplog, "kafka write failed, retrying")
    assert [r.write for r in written] == ["posted", "posted"]  # type: ignore[attr-defined]
