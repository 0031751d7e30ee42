"""Broker outages: deliveries are spooled, drained in order, and only a full spool refuses.

Each test runs its own embedded broker, because it stops and restarts it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker, free_port
from streams.domain import cloudevents
from streams.domain.records import SYNC_EVENT_V1
from tests.connectors.bridge.helpers import AUTH, bridge_settings, envelope, running_bridge, seq_of
from tests.support import read_topic, wait_for, wait_for_records

PREFIX = "outage."
TOPIC = f"{PREFIX}sync-events"


@pytest.fixture
async def own_broker() -> AsyncIterator[list[EmbeddedBroker]]:
    """A list holding this test's broker(s); every one is stopped at the end."""
    brokers = [EmbeddedBroker()]
    await brokers[0].start()
    yield brokers
    for b in brokers:
        b.stop(timeout_s=0.5)


async def _post_sequences(client, apps: int, per_app: int, first_seq: int = 0) -> list[dict]:
    """Each app posts its deliveries one after another; apps run concurrently."""
    answers: list[dict] = []

    async def one_app(app: int) -> None:
        for seq in range(first_seq, first_seq + per_app):
            resp = await client.post("/v1/sync", data=envelope(f"app-{app}", seq), headers=AUTH)
            assert resp.status == 202, await resp.text()
            answers.append(await resp.json())

    await asyncio.gather(*(one_app(a) for a in range(apps)))
    return answers


def _per_app_seqs(records) -> dict[str, list[int]]:
    per_app: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_app[r.key].append(seq_of(r.value))
    return per_app


async def test_broker_outage_spools_then_drains_every_delivery_once_in_order(
    own_broker: list[EmbeddedBroker], tmp_path: Path
) -> None:
    first = own_broker[0]
    settings = bridge_settings(first.bootstrap, PREFIX, tmp_path / "spool")
    async with running_bridge(settings) as (client, bridge):
        before = await _post_sequences(client, apps=5, per_app=2)
        assert not any(a["spooled"] for a in before)
        first.stop(timeout_s=0.1)  # Tansu lingers on SIGTERM with clients connected
        during = await _post_sequences(client, apps=5, per_app=6, first_seq=2)
        assert sum(a["spooled"] for a in during) >= 25  # all but a few in flight at the cut
        assert bridge.spool.records == sum(a["spooled"] for a in during)
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["broker"] == "down"

        # A new, empty broker on the same port: the bridge re-creates its topic and drains.
        second = EmbeddedBroker(port=first.port)
        own_broker.append(second)
        await second.start()
        await wait_for(lambda: bridge.spool.records == 0, timeout=30, what="spool drained")
        after = await _post_sequences(client, apps=5, per_app=1, first_seq=8)
        assert not any(a["spooled"] for a in after)
        metrics = await (await client.get("/metrics")).text()
    assert "synctrail_bridge_spool_records 0.0" in metrics
    records = await wait_for_records(second.bootstrap, TOPIC, len(during) + len(after))
    spooled_ids = {a["delivery_id"] for a in during if a["spooled"]}
    ids = [r.value["delivery_id"] for r in records]
    assert len(ids) == len(set(ids))  # exactly once
    assert spooled_ids <= set(ids)
    for r in records:  # drained from the spool or sent at once: the same CloudEvents headers
        want = cloudevents.headers(SYNC_EVENT_V1, r.value, r.key, "/synctrail/outage")
        assert r.headers == tuple(want), (r.value["delivery_id"], r.headers)
    for seqs in _per_app_seqs(records).values():
        assert seqs == sorted(seqs) and seqs[-1] == 8
    assert list(tmp_path.joinpath("spool").glob("*.seg")) == []


async def test_full_spool_answers_503_with_retry_after_and_loses_nothing_accepted(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens yet: Kafka is down from the start
    settings = bridge_settings(
        f"127.0.0.1:{port}",
        PREFIX,
        tmp_path / "spool",
        bridge_spool_max_bytes=16 * 1024,
        bridge_spool_segment_bytes=4096,
        bridge_retry_after_s=7,
    )
    broker = EmbeddedBroker(port=port)
    try:
        async with running_bridge(settings) as (client, bridge):
            assert not bridge.dispatcher.broker_up
            accepted: list[tuple[str, int]] = []
            refused = 0
            seq = 0
            while refused < 3:
                resp = await client.post(
                    "/v1/sync", data=envelope(f"app-{seq % 3}", seq), headers=AUTH
                )
                if resp.status == 503:
                    refused += 1
                    assert resp.headers["Retry-After"] == "7"
                    assert "spool" in (await resp.json())["error"]
                else:
                    assert resp.status == 202
                    answer = await resp.json()
                    assert answer["spooled"] is True
                    accepted.append((answer["delivery_id"], seq))
                seq += 1
                assert seq < 200, "the spool never filled up"
            assert len(accepted) >= 5
            await broker.start()
            await wait_for(lambda: bridge.spool.records == 0, timeout=30, what="spool drained")
            resp = await client.post("/v1/sync", data=envelope("app-0", 1000), headers=AUTH)
            assert resp.status == 202 and (await resp.json())["spooled"] is False
        records = await wait_for_records(broker.bootstrap, TOPIC, len(accepted) + 1)
        got = [r.value["delivery_id"] for r in records]
        assert len(got) == len(set(got)) == len(accepted) + 1  # each exactly once
        assert {d for d, _ in accepted} <= set(got)
        for seqs in _per_app_seqs(records).values():
            assert seqs == sorted(seqs)
    finally:
        broker.stop()


async def test_unwritable_spool_with_kafka_down_answers_503_and_is_not_ready(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the spool folder cannot be created under a file")
    settings = bridge_settings(f"127.0.0.1:{free_port()}", PREFIX, blocker / "spool")
    async with running_bridge(settings) as (client, _):
        resp = await client.post("/v1/sync", data=envelope("app", 1), headers=AUTH)
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        ready = await client.get("/readyz")
        assert ready.status == 503
        body = await ready.json()
        assert body["broker"] == "down" and body["spool"]["writable"] is False


async def test_a_bridge_started_while_kafka_is_down_accepts_and_delivers_later(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = bridge_settings(f"127.0.0.1:{port}", PREFIX, tmp_path / "spool")
    broker = EmbeddedBroker(port=port)
    try:
        async with running_bridge(settings) as (client, bridge):
            answers = await _post_sequences(client, apps=2, per_app=3)
            assert all(a["spooled"] for a in answers)
            await broker.start()
            await wait_for(lambda: bridge.spool.records == 0, timeout=30, what="spool drained")
        records = await read_topic(broker.bootstrap, TOPIC)
        assert sorted(r.value["delivery_id"] for r in records) == sorted(
            a["delivery_id"] for a in answers
        )
    finally:
        broker.stop()
