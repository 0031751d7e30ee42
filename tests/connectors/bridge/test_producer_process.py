"""The producer process: its framing, and the bridge's answer when the process dies."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.bridge.batcher import BatchFailed
from connectors.bridge.producer import ProducerConfig
from connectors.bridge.producer_process import (
    SUBMIT,
    FrameReader,
    ProducerProcess,
    frame,
    parse_submit,
    submit_head,
)
from connectors.broker import EmbeddedBroker
from tests.connectors.bridge.helpers import AUTH, bridge_settings, envelope, running_bridge, seq_of
from tests.support import process_gone, wait_for, wait_for_records

frames = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(max_size=300)),
    max_size=20,
)


@given(frames=frames, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(frame(kind, ident, payload) for kind, ident, payload in frames)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = FrameReader()
    out = []
    for start, end in itertools.pairwise(bounds):
        out += reader.feed(stream[start:end])
    assert out == frames


@given(
    topic=st.text(min_size=1, max_size=60),
    key=st.binary(max_size=300),
    value=st.binary(max_size=3000),
    ident=st.integers(0, 2**64 - 1),
)
def test_a_submit_frame_carries_topic_key_and_value_unchanged(
    topic: str, key: bytes, value: bytes, ident: int
) -> None:
    [(kind, got_ident, payload)] = FrameReader().feed(
        submit_head(ident, topic.encode(), key, len(value)) + value
    )
    assert (kind, got_ident) == (SUBMIT, ident)
    assert parse_submit(payload) == (topic, key, value)


async def test_records_fail_at_once_while_no_producer_process_runs() -> None:
    config = ProducerConfig("127.0.0.1:1", "t.", 1, 1, 1.0, 0, 65536)
    link = ProducerProcess(config, event_loop="asyncio", log_level="INFO", log_format="json")
    with pytest.raises(BatchFailed, match="producer process not running"):
        await link.submit("t.sync-events", b"argocd/a", b"{}")
    assert link.oldest_unacknowledged() is None


async def test_a_killed_producer_process_spools_deliveries_and_a_new_one_drains_them_in_order(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(broker.bootstrap, topics, tmp_path / "spool")
    async with running_bridge(settings) as (client, bridge):
        producer = bridge.dispatcher.producer
        assert isinstance(producer, ProducerProcess)
        first_pid = producer.pid
        assert first_pid is not None

        async def post(app: str, seq: int) -> dict:
            resp = await client.post("/v1/sync", data=envelope(app, seq), headers=AUTH)
            assert resp.status == 202, await resp.text()
            return await resp.json()

        before = [await post(f"app-{a}", 0) for a in range(3)]
        assert not any(a["spooled"] for a in before)

        os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: not producer.alive, timeout=10, what="the link to notice")
        during = [await post(f"app-{a}", seq) for seq in (1, 2) for a in range(3)]
        assert all(a["spooled"] for a in during[:3])  # nothing to produce with: spooled

        await wait_for(lambda: bridge.spool.records == 0, timeout=30, what="spool drained")
        assert producer.pid not in (None, first_pid)
        after = [await post(f"app-{a}", 3) for a in range(3)]
        assert not any(a["spooled"] for a in after)
        second_pid = producer.pid
    assert second_pid is not None
    await wait_for(lambda: process_gone(second_pid), timeout=10, what="child gone after stop")

    topic = f"{topics}sync-events"
    answers = before + during + after
    records = await wait_for_records(broker.bootstrap, topic, len(answers))
    assert [r.value["delivery_id"] for r in records if r.key == "argocd/app-0"] == [
        a["delivery_id"] for a in answers if a in (before[0], during[0], during[3], after[0])
    ]
    per_app: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_app.setdefault(r.key, []).append(seq_of(r.value))
    assert per_app == {f"argocd/app-{a}": [0, 1, 2, 3] for a in range(3)}
