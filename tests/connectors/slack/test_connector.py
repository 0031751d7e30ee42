"""The Slack connector against the real embedded broker and a local Slack-compatible server.

Notifications are produced straight onto ``<prefix>notifications`` (what the worker writes);
the real slack-sdk client posts to ``tests.slack_server.SlackServer``. Times are measured from
the server's own arrival timestamps.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import aiohttp

from connectors.slack.service import serve
from tests.connectors.slack.support import (
    committed_offsets,
    end_offsets,
    notification,
    produce_notes,
    running,
    slack_settings,
)
from tests.contracts import validate_record
from tests.slack_server import Reply, SlackServer
from tests.support import produce, read_topic, wait_for, wait_for_records


def _count(connector: Any, counter: str, **labels: str) -> float:
    """A counter of the connector's registry, read through prometheus_client's public API."""
    value = connector.metrics.registry.get_sample_value(f"synctrail_slack_{counter}_total", labels)
    return value or 0.0


async def test_posts_each_notification_once_with_its_key_and_commits(broker, topics, slack_server):
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": "🚀 guestbook → abc1234"}}]
    notes = [
        notification("argocd/guestbook:1", text="guestbook deployed abc1234", blocks=blocks),
        notification("argocd/payments:1", "#payments", app="payments"),
        notification("argocd/guestbook:1", text="guestbook deployed abc1234", blocks=blocks),
    ]
    await produce_notes(broker.bootstrap, topics, notes)
    settings = slack_settings(broker.bootstrap, topics, slack_server)
    async with running(settings) as connector:
        await wait_for(lambda: len(slack_server.posts()) >= 2, what="two posts")
        await wait_for(
            lambda: _count(connector, "posts", outcome="skipped_duplicate") == 1,
            what="the repeated key to be skipped",
        )
        notifications = f"{topics}notifications"
        ends = await end_offsets(broker.bootstrap, notifications)

        async def committed_to_end() -> bool:
            return (
                await committed_offsets(broker.bootstrap, settings.slack_group_id, notifications)
                == ends
            )

        await wait_for(committed_to_end, what="offsets committed to the end")

    posts = slack_server.posts()
    assert len(posts) == 2
    guestbook = slack_server.posts("#deployments")[0]
    assert guestbook.text == "guestbook deployed abc1234"
    assert guestbook.blocks == blocks
    assert guestbook.metadata == {
        "event_type": "synctrail_deploy",
        "event_payload": {"idempotency_key": "argocd/guestbook:1"},
    }
    assert slack_server.posts("#payments")[0].key == "argocd/payments:1"
    assert len(slack_server.calls_to("chat.postMessage")) == 2

    state = await read_topic(broker.bootstrap, f"{topics}slack-state")
    kinds = [(r.key, r.value["kind"]) for r in state if r.key == "argocd/guestbook:1"]
    assert kinds == [("argocd/guestbook:1", "intent"), ("argocd/guestbook:1", "posted")]
    posted = next(
        r.value for r in state if r.value["kind"] == "posted" and r.key == "argocd/guestbook:1"
    )
    validate_record(posted)
    assert posted["ts"] == guestbook.ts and posted["channel_id"] == guestbook.channel_id


async def test_429_retry_after_is_waited_before_the_next_attempt(broker, topics, slack_server):
    slack_server.script("chat.postMessage", Reply.rate_limited(1))
    await produce_notes(broker.bootstrap, topics, [notification("k-429")])
    async with running(slack_settings(broker.bootstrap, topics, slack_server)) as connector:
        await wait_for(lambda: slack_server.posts(), what="the post after the 429")
        assert _count(connector, "retries", reason="rate_limited") == 1
    first, second = slack_server.calls_to("chat.postMessage")
    assert first.status == 429 and second.status == 200
    waited = second.at - first.at
    assert waited >= 1.0, f"retried {waited:.3f}s after a 429 with Retry-After: 1"
    assert waited < 2.0  # and not much longer: the wait is the server's, not a guess
    assert len(slack_server.posts()) == 1


async def test_two_500s_then_success_post_exactly_once(broker, topics, slack_server):
    slack_server.script("chat.postMessage", Reply.server_error(), Reply.server_error(503))
    await produce_notes(broker.bootstrap, topics, [notification("k-500")])
    async with running(slack_settings(broker.bootstrap, topics, slack_server)) as connector:
        # counted once the connector has read Slack's answer, a moment after the server logs it
        await wait_for(
            lambda: _count(connector, "posts", outcome="posted") >= 1,
            what="the post after two 5xx",
        )
        assert _count(connector, "retries", reason="server_error") == 2
        assert _count(connector, "posts", outcome="posted") == 1
    assert [c.status for c in slack_server.calls_to("chat.postMessage")] == [500, 503, 200]
    assert [p.key for p in slack_server.posts()] == ["k-500"]


async def test_a_lost_response_is_found_in_history_and_not_posted_again(
    broker, topics, slack_server
):
    # Slack stored the message but the answer was a 502: posting again would duplicate it.
    slack_server.script("chat.postMessage", Reply.accepted_then(Reply.server_error(502)))
    await produce_notes(broker.bootstrap, topics, [notification("k-lost")])
    async with running(slack_settings(broker.bootstrap, topics, slack_server)) as connector:
        await wait_for(lambda: _count(connector, "posts", outcome="posted") == 1, what="delivery")
    assert len(slack_server.calls_to("chat.postMessage")) == 1
    assert [p.key for p in slack_server.posts()] == ["k-lost"]
    history = slack_server.calls_to("conversations.history")
    assert history and history[0].params["include_all_metadata"] in ("1", "true")


async def test_permanent_errors_dead_letter_at_once_and_the_rest_still_posts(
    broker, topics, slack_server
):
    slack_server.script(
        "chat.postMessage",
        Reply.error("invalid_auth"),
        Reply.error("channel_not_found"),
        Reply.error("msg_too_long"),
    )
    keys = ["k-auth", "k-channel", "k-long", "k-fine"]
    await produce_notes(broker.bootstrap, topics, [notification(k) for k in keys])
    async with running(slack_settings(broker.bootstrap, topics, slack_server)) as connector:
        dead = await wait_for_records(broker.bootstrap, f"{topics}dead-letters", 3, timeout=30)
        await wait_for(lambda: slack_server.posts(), what="the fourth message")
        assert _count(connector, "dead_letters") == 3
        assert _count(connector, "posts", outcome="dead_lettered") == 3
        assert (
            sum(
                _count(connector, "retries", reason=r)
                for r in ("rate_limited", "server_error", "network")
            )
            == 0
        )
    # one attempt each, no retry storm
    assert [c.error for c in slack_server.calls_to("chat.postMessage")] == [
        "invalid_auth",
        "channel_not_found",
        "msg_too_long",
        None,
    ]
    by_key = {r.value["original"]["idempotency_key"]: r.value for r in dead}
    assert set(by_key) == {"k-auth", "k-channel", "k-long"}
    auth = by_key["k-auth"]
    validate_record(auth)
    assert auth["component"] == "slack"
    assert auth["error_type"] == "invalid_auth"
    assert "invalid_auth" in auth["reason"] and "SYNCTRAIL_SLACK_TOKEN" in auth["reason"]
    assert auth["source_topic"] == f"{topics}notifications"
    assert auth["key"] == "argocd/guestbook"
    assert [p.key for p in slack_server.posts()] == ["k-fine"]


async def test_retries_are_bounded_then_dead_lettered(broker, topics, slack_server):
    slack_server.script("chat.postMessage", *[Reply.server_error()] * 3)
    await produce_notes(broker.bootstrap, topics, [notification("k-down")])
    settings = slack_settings(broker.bootstrap, topics, slack_server, slack_max_attempts=3)
    async with running(settings):
        (dead,) = await wait_for_records(broker.bootstrap, f"{topics}dead-letters", 1, timeout=30)
    assert len(slack_server.calls_to("chat.postMessage")) == 3
    assert dead.value["reason"].startswith("gave up after 3 failed attempts")
    assert slack_server.posts() == []


async def test_records_that_are_not_notifications_are_dead_lettered(broker, topics, slack_server):
    topic = f"{topics}notifications"
    await produce(
        broker.bootstrap,
        topic,
        [(b"argocd/x", b"\xff not json"), (b"argocd/x", b'{"schema": "nope"}')],
    )
    await produce_notes(broker.bootstrap, topics, [notification("k-after")])
    async with running(slack_settings(broker.bootstrap, topics, slack_server)):
        dead = await wait_for_records(broker.bootstrap, f"{topics}dead-letters", 2, timeout=30)
        await wait_for(lambda: slack_server.posts(), what="the valid notification")
    for record in dead:
        validate_record(record.value)
        assert record.value["error_type"] == "invalid_notification"
    assert dead[0].value["original_text"].endswith("not json")
    assert "schema" in dead[1].value["reason"]


async def test_200_notifications_over_3_channels_are_paced_and_all_arrive(
    broker, topics, slack_server
):
    interval = 0.05
    channels = ["#alpha", "#beta", "#gamma"]
    # six apps, two per channel (routing sends one app to one channel)
    notes = [notification(f"k{i:03d}", channels[i % 6 % 3], app=f"app-{i % 6}") for i in range(200)]
    await produce_notes(broker.bootstrap, topics, notes)
    settings = slack_settings(
        broker.bootstrap, topics, slack_server, slack_rate_per_channel_s=interval
    )
    async with running(settings):
        await wait_for(lambda: len(slack_server.posts()) >= 200, timeout=60, what="200 posts")
    posts = slack_server.posts()
    assert sorted(p.key for p in posts) == sorted(n["idempotency_key"] for n in notes)
    assert all(count == 1 for count in Counter(p.key for p in posts).values())
    by_channel: dict[str, list[float]] = defaultdict(list)
    for p in posts:
        by_channel[p.channel].append(p.at)
    assert sorted(by_channel) == channels
    for channel, times in by_channel.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert min(gaps) >= interval - 0.005, f"{channel}: posts {min(gaps):.4f}s apart"
    # the channels ran side by side: far quicker than 200 posts in a row at this pace
    span = max(p.at for p in posts) - min(p.at for p in posts)
    assert span < 200 * interval * 0.7
    # one app's messages keep their order (one partition, one channel)
    for app in {n["app"] for n in notes}:
        sent = [n["idempotency_key"] for n in notes if n["app"] == app]
        assert [p.key for p in posts if p.key in set(sent)] == sent


async def test_threads_one_per_app_per_channel_per_day_survive_a_restart(
    broker, topics, slack_server
):
    day1, day2 = "2026-07-06T09:00:00.000Z", "2026-07-07T09:00:00.000Z"
    first = [
        notification("g1", created_at=day1),
        notification("g2", created_at=day1),
        notification("p1", app="payments", created_at=day1),
        notification("g3", created_at=day2),
    ]
    settings = slack_settings(broker.bootstrap, topics, slack_server, slack_threads="app")
    await produce_notes(broker.bootstrap, topics, first)
    async with running(settings):
        await wait_for(lambda: len(slack_server.posts()) >= 4, what="four posts")
    await produce_notes(broker.bootstrap, topics, [notification("g4", created_at=day1)])
    # A new connector that even reads the topic from the start again (a fresh group, so no
    # ~10 s wait for the old member to leave): the thread ts and the posted keys come from
    # slack-state alone.
    again = settings.model_copy(update={"slack_group_id": f"{topics}slack-again"})
    async with running(again) as connector:
        await wait_for(lambda: len(slack_server.posts()) >= 5, what="the fifth post")
        await wait_for(
            lambda: _count(connector, "posts", outcome="skipped_duplicate") == 4,
            what="the four earlier notifications to be skipped",
        )
    posts = {p.key: p for p in slack_server.posts()}
    assert posts["g1"].thread_ts is None
    assert posts["g2"].thread_ts == posts["g1"].ts
    assert posts["g4"].thread_ts == posts["g1"].ts
    assert posts["p1"].thread_ts is None  # another app: its own thread
    assert posts["g3"].thread_ts is None  # another day: a new thread
    assert len(slack_server.posts()) == 5


async def test_incoming_webhook_mode_posts_and_dead_letters(broker, topics, slack_server):
    slack_server.script("webhook", Reply.webhook_error("channel_not_found", 404))
    await produce_notes(broker.bootstrap, topics, [notification("w-bad"), notification("w-good")])
    settings = slack_settings(
        broker.bootstrap, topics, None, slack_webhook_url=slack_server.webhook_url
    )
    async with running(settings):
        (dead,) = await wait_for_records(broker.bootstrap, f"{topics}dead-letters", 1, timeout=30)
        await wait_for(lambda: slack_server.posts(), what="the webhook post")
    assert dead.value["error_type"] == "channel_not_found"
    (posted,) = slack_server.posts()
    assert posted.key == "w-good" and posted.text == "guestbook deployed w-good"
    assert len(slack_server.calls_to("webhook")) == 2


async def test_metrics_and_healthz(broker, topics, slack_server):
    slack_server.script(
        "chat.postMessage", Reply.server_error(), Reply.normal(), Reply.error("not_in_channel")
    )
    await produce_notes(
        broker.bootstrap,
        topics,
        [notification("m1"), notification("m2"), notification("m1"), notification("m3")],
    )
    settings = slack_settings(broker.bootstrap, topics, slack_server)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    base = f"http://127.0.0.1:{settings.slack_metrics_port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape() -> str:
                try:
                    async with http.get(f"{base}/metrics") as response:
                        return await response.text()
                except aiohttp.ClientError:
                    return ""

            want = [
                'synctrail_slack_posts_total{outcome="posted"} 2.0',
                'synctrail_slack_posts_total{outcome="skipped_duplicate"} 1.0',
                'synctrail_slack_posts_total{outcome="dead_lettered"} 1.0',
                'synctrail_slack_retries_total{reason="server_error"} 1.0',
                'synctrail_slack_retries_total{reason="rate_limited"} 0.0',
                "synctrail_slack_dead_letters_total 1.0",
                "synctrail_slack_post_duration_seconds_count 4.0",
                "synctrail_slack_backlog_messages 0.0",
            ]

            async def all_there() -> str | None:
                text = await scrape()
                return text if all(line in text for line in want) else None

            text = await wait_for(all_there, timeout=15, what="metrics")
            assert "synctrail_slack_post_duration_seconds_bucket" in text
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_invalid_token_at_start_exits_with_a_clear_error(broker, topics):
    server = SlackServer(token="xoxb-the-right-one")
    async with server:
        settings = slack_settings(broker.bootstrap, topics, server)  # sends the test token
        stop = asyncio.Event()
        from connectors.slack.connector import Connector

        code = await asyncio.wait_for(Connector(settings).run(stop), 30)
    assert code == 2
    assert [c.method for c in server.calls] == ["auth.test"]
