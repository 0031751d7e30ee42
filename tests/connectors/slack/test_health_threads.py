"""Health messages reply in the thread of their deployment's message, against the embedded
broker and the local Slack-compatible server.

The notifications are the worker's own: deployment messages from
``notify.deployment_notifications`` and health messages from ``notify.health_notification``
over the state ``decide`` built, so the key a health message threads under is the key its
deploy's message was posted with.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streams.domain.decide import decide
from streams.domain.notify import NotifyConfig, deployment_notifications, health_notification
from tests.connectors.slack.support import produce_notes, running, slack_settings
from tests.slack_server import Posted
from tests.streams.domain.test_decide import event
from tests.support import read_topic, wait_for

NOW = datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
YESTERDAY = NOW - timedelta(days=1)
REVISIONS = {"dep-1": "a" * 40, "dep-2": "b" * 40, "dep-3": "c" * 40}


def _health(
    state: dict[str, Any], deployment: str, health: str, previous: str, delivery: str
) -> dict[str, Any]:
    transition = {
        "schema": "synctrail.dora/v1",
        "kind": "health_transition",
        "app": "argocd/shop",
        "project": "default",
        "timestamp": NOW.timestamp(),
        "delivery_id": delivery,
        "at": "2026-11-28T10:12:00.000Z",
        "health": health,
        "previous_health": previous,
        "deployment": deployment,
        "revision": REVISIONS[deployment],
        "seconds": 720.0,
    }
    note = health_notification(transition, state, NotifyConfig(), NOW)
    assert note is not None
    return note


def _three_deploys() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The app's state after three deploys of ``argocd/shop``, and their messages: the first
    a day before the other two (so it is in another day's thread)."""
    state: dict[str, Any] | None = None
    notes = []
    for e, now in (
        (
            event("a" * 40, {"web": "nginx:1.1"}, started="2026-11-27T09:00:00Z", delivery="dep-1"),
            YESTERDAY,
        ),
        (
            event("b" * 40, {"web": "nginx:1.2"}, started="2026-11-28T09:30:00Z", delivery="dep-2"),
            NOW,
        ),
        (
            event("c" * 40, {"web": "nginx:1.3"}, started="2026-11-28T09:40:00Z", delivery="dep-3"),
            NOW,
        ),
    ):
        decision = decide(e, state, [], now=now)
        assert decision.deployment is not None
        state = decision.state
        notes += deployment_notifications(decision.deployment, NotifyConfig(), now)
    assert state is not None
    return state, notes


def _by_key(posts: list[Posted]) -> dict[str | None, Posted]:
    return {p.key: p for p in posts}


async def test_with_threads_a_health_message_replies_under_its_deploy_once(
    broker, topics, slack_server
):
    state, [deploy_1, deploy_2, deploy_3] = _three_deploys()
    degraded_1 = _health(state, "dep-1", "Degraded", "Progressing", "h1")
    healthy_3 = _health(state, "dep-3", "Healthy", "Degraded", "h2")
    orphan = {**_health(state, "dep-3", "Degraded", "Healthy", "h3"), "thread_under": "never"}
    notes = [deploy_1, deploy_2, deploy_3, degraded_1, healthy_3, degraded_1, orphan]
    await produce_notes(broker.bootstrap, topics, notes)
    settings = slack_settings(broker.bootstrap, topics, slack_server, slack_threads="app")
    async with running(settings) as connector:
        await wait_for(lambda: len(slack_server.posts()) >= 6, what="six posts")
        await wait_for(
            lambda: (
                connector.metrics.registry.get_sample_value(
                    "synctrail_slack_posts_total", {"outcome": "skipped_duplicate"}
                )
                == 1
            ),
            what="the second delivery of the Degraded message to be skipped",
        )
    posts = _by_key(slack_server.posts())
    assert len(slack_server.posts()) == 6
    first, second, third = (posts[d["idempotency_key"]] for d in (deploy_1, deploy_2, deploy_3))
    # the app's day threads: yesterday's started by the first deploy, today's by the second
    assert first.thread_ts is None and second.thread_ts is None and third.thread_ts == second.ts
    # today's message about yesterday's deploy replies under that deploy, not in today's thread
    degraded = posts[degraded_1["idempotency_key"]]
    assert degraded.thread_ts == first.ts
    assert degraded.text == "shop degraded 12 min after deploy aaaaaaa"
    # the third deploy was itself a reply: its health message goes into the same thread
    assert posts[healthy_3["idempotency_key"]].thread_ts == second.ts
    assert (
        posts[healthy_3["idempotency_key"]].text == "shop healthy again 12 min after deploy ccccccc"
    )
    assert posts[orphan["idempotency_key"]].thread_ts is None  # its deploy is unknown: plain
    state_records = await read_topic(broker.bootstrap, f"{topics}slack-state")
    threads = {r.key for r in state_records if r.value and r.value["kind"] == "thread"}
    assert len(threads) == 2  # the two days' threads, both started by deploys


async def test_without_threads_a_health_message_is_a_plain_message_posted_once(
    broker, topics, slack_server
):
    state, [deploy_1, *_] = _three_deploys()
    degraded = _health(state, "dep-1", "Degraded", "Healthy", "h1")
    assert degraded["thread_under"] == deploy_1["idempotency_key"]
    await produce_notes(broker.bootstrap, topics, [deploy_1, degraded, degraded])
    settings = slack_settings(broker.bootstrap, topics, slack_server)  # threads off
    async with running(settings) as connector:
        await wait_for(lambda: len(slack_server.posts()) >= 2, what="two posts")
        await wait_for(
            lambda: (
                connector.metrics.registry.get_sample_value(
                    "synctrail_slack_posts_total", {"outcome": "skipped_duplicate"}
                )
                == 1
            ),
            what="the second delivery to be skipped",
        )
    assert len(slack_server.posts()) == 2
    posted = _by_key(slack_server.posts())[degraded["idempotency_key"]]
    assert posted.thread_ts is None
    assert posted.channel == "#deployments"
