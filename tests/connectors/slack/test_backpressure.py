"""Backpressure per channel: a channel waiting out a long 429 holds up only itself.

The real connector reads the embedded broker and posts with the real slack-sdk client to
``tests.slack_server.SlackServer``, which answers every post to ``#slow`` with 429 and
``Retry-After: 30``. ``#fast``'s notifications must still be posted within a few seconds each,
while ``#slow``'s lane stays bounded, its partition paused, and nothing of it committed.
"""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from tests.connectors.slack.support import (
    committed_offsets,
    end_offsets,
    notification,
    produce_notes,
    running,
    slack_settings,
)
from tests.slack_server import SlackServer
from tests.support import wait_for

RETRY_AFTER_S = 30
FAST_BOUND_S = 5.0  # each #fast post within this of its produce (2 shared cores: generous)
SLOW_NOTES = 12
LANE_BOUND = 3
MAX_IN_FLIGHT = 8  # below SLOW_NOTES: one global cap alone would let #slow fill it


def partition_of(key: bytes, partitions: int = 8) -> int:
    """The partition the producer's default partitioner picks for ``key``."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


async def test_a_channel_waiting_out_a_long_429_does_not_hold_up_another(
    broker, topics, slack_server: SlackServer
):
    slow_p, fast_p = partition_of(b"argocd/slow-app"), partition_of(b"argocd/fast-app")
    assert slow_p != fast_p  # the two apps' records travel in different partitions
    slack_server.rate_limit_channel("#slow", RETRY_AFTER_S)
    slow = [notification(f"slow-{i}", "#slow", app="slow-app") for i in range(SLOW_NOTES)]
    await produce_notes(broker.bootstrap, topics, slow)
    settings = slack_settings(
        broker.bootstrap,
        topics,
        slack_server,
        slack_channel_queue_max=LANE_BOUND,
        slack_max_in_flight=MAX_IN_FLIGHT,
        slack_shutdown_grace_s=1.0,
    )
    topic = f"{topics}notifications"
    async with running(settings) as connector:
        await wait_for(lambda: slack_server.calls_to("chat.postMessage"), what="#slow's 429")
        first_429 = slack_server.calls_to("chat.postMessage")[0]
        assert first_429.status == 429 and first_429.params["channel"] == "#slow"

        delays = []
        for i in range(5):
            key = f"fast-{i}"
            sent = time.monotonic()
            await produce_notes(
                broker.bootstrap, topics, [notification(key, "#fast", app="fast-app")]
            )
            post = await wait_for(
                lambda key=key: next(
                    (p for p in slack_server.posts("#fast") if p.key == key), None
                ),
                timeout=30,
                what=f"{key} posted",
            )
            delays.append(post.at - sent)
        assert max(delays) < FAST_BOUND_S, f"#fast posted after {delays}"
        # all of that while #slow was still waiting out its first Retry-After
        assert post.at < first_429.at + RETRY_AFTER_S
        slow_calls = [
            c for c in slack_server.calls_to("chat.postMessage") if c.params["channel"] == "#slow"
        ]
        assert len(slow_calls) == 1 and slack_server.posts("#slow") == []

        # #slow's lane is bounded and its partition paused at the first record it could not take
        assert connector.scheduler.holding("#slow") == LANE_BOUND
        assert connector.fetch is not None
        assert TopicPartition(topic, slow_p) in connector.fetch.consumer.paused()

        ends = await end_offsets(broker.bootstrap, topic)

        async def fast_committed() -> bool:
            committed = await committed_offsets(broker.bootstrap, settings.slack_group_id, topic)
            return committed.get(fast_p) == ends[fast_p]

        await wait_for(fast_committed, what="#fast's partition committed to its end")
    committed = await committed_offsets(broker.bootstrap, settings.slack_group_id, topic)
    assert committed.get(slow_p, 0) == 0, "committed past #slow's first, unposted, record"
    assert committed[fast_p] == ends[fast_p] == 5
