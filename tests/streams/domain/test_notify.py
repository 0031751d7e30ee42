"""Health notifications (pure): which transitions are announced, the text, the channel, the
idempotency key and the deployment message they thread under."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.domain import dora
from streams.domain.decide import decide
from streams.domain.notify import NotifyConfig, deployment_notifications, health_notification
from streams.domain.render import duration_label
from streams.domain.routing import parse_routes
from tests.streams.domain.test_decide import event
from tests.streams.domain.test_records import assert_typed

NOW = datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
REV = "a" * 40


def _deployed(*events: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The app's state after ``events`` and the deployment records they announced."""
    state, deployments = None, []
    for e in events:
        decision = decide(e, state, [], now=NOW)
        state = decision.state if decision.state is not None else state
        if decision.deployment is not None:
            deployments.append(decision.deployment)
    assert state is not None
    return state, deployments


def transition(
    health: str,
    previous: str | None,
    deployment: str | None,
    *,
    delivery: str | None = "h1",
    seconds: float | None = 720.0,
    at: str = "2026-11-28T10:12:00.000Z",
) -> dict[str, Any]:
    """A ``synctrail.dora/v1`` health_transition record as the worker writes it."""
    return {
        "schema": "synctrail.dora/v1",
        "kind": "health_transition",
        "app": "argocd/shop",
        "project": "default",
        "timestamp": NOW.timestamp(),
        "delivery_id": delivery,
        "at": at,
        "health": health,
        "previous_health": previous,
        "deployment": deployment,
        "revision": REV,
        "reason": None,
        "seconds": seconds,
        "episode": None,
        "started_at": None,
    }


def test_degraded_reads_app_minutes_and_short_revision_and_goes_where_the_deploy_went():
    config = NotifyConfig(routes=parse_routes("namespace:shop=#shop-deploys"))
    state, [deployment] = _deployed(event(REV, {"web": "nginx:1.1"}, delivery="dep-1"))
    note = health_notification(transition("Degraded", "Progressing", "dep-1"), state, config, NOW)
    assert note is not None
    assert_typed(note)
    [deploy_note] = deployment_notifications(deployment, config, NOW)
    assert note["kind"] == "health"
    assert note["text"] == "shop degraded 12 min after deploy aaaaaaa"
    assert note["channel"] == deploy_note["channel"] == "#shop-deploys"
    assert note["thread_under"] == deploy_note["idempotency_key"]
    assert deploy_note["thread_under"] is None
    assert note["deployment"] is None and note["violation"] is None
    assert (note["app"], note["app_namespace"], note["project"]) == ("shop", "argocd", "default")
    assert "aaaaaaa" in str(note["blocks"]) and "degraded" in str(note["blocks"])


def test_healthy_is_announced_only_right_after_degraded():
    state, _ = _deployed(event(REV, {"web": "nginx:1.1"}, delivery="dep-1"))
    config = NotifyConfig()
    back = health_notification(
        transition("Healthy", "Degraded", "dep-1", seconds=1500.0), state, config, NOW
    )
    assert back is not None
    assert back["text"] == "shop healthy again 25 min after deploy aaaaaaa"
    assert back["thread_under"] is not None
    # a deploy that turns Healthy, or any health but Degraded and Healthy: no news
    for health, previous in (("Healthy", "Progressing"), ("Healthy", None), ("Missing", "Healthy")):
        assert (
            health_notification(transition(health, previous, "dep-1"), state, config, NOW) is None
        )


def test_off_setting_and_other_dora_kinds_give_no_message():
    state, _ = _deployed(event(REV, {"web": "nginx:1.1"}, delivery="dep-1"))
    degraded = transition("Degraded", "Healthy", "dep-1")
    assert health_notification(degraded, state, NotifyConfig(health=False), NOW) is None
    failure = {**degraded, "kind": "change_failure", "reason": "degraded"}
    assert health_notification(failure, state, NotifyConfig(), NOW) is None
    not_dora = {**degraded, "schema": "synctrail.metric/v1"}
    assert health_notification(not_dora, state, NotifyConfig(), NOW) is None


def test_the_key_is_the_same_on_a_replay_and_differs_for_every_other_transition():
    state, _ = _deployed(event(REV, {"web": "nginx:1.1"}, delivery="dep-1"))
    config = NotifyConfig()

    def key(t: dict[str, Any], now: datetime = NOW) -> str:
        note = health_notification(t, state, config, now)
        assert note is not None
        return str(note["idempotency_key"])

    first = transition("Degraded", "Healthy", "dep-1", delivery="h1")
    replayed = key(dict(first), NOW + timedelta(hours=3))
    assert key(first) == replayed == "argocd/shop:health:dep-1:Degraded:h1"
    others = {
        key(transition("Healthy", "Degraded", "dep-1", delivery="h2")),
        key(transition("Degraded", "Healthy", "dep-1", delivery="h3")),  # degraded again
        key(transition("Degraded", "Healthy", "dep-2", delivery="h4")),
    }
    assert len(others) == 3 and replayed not in others
    # without a delivery id the transition's time tells them apart
    no_id = transition("Degraded", "Healthy", "dep-1", delivery=None)
    assert key(no_id) == "argocd/shop:health:dep-1:Degraded:2026-11-28T10:12:00.000Z"


def test_threads_under_the_named_deploy_not_the_newest_and_by_digest_and_for_bare_bodies():
    a = event(REV, {"web": "nginx:1.1"}, started="2026-07-06T09:00:00Z", delivery="dep-a")
    b = event("b" * 40, {"web": "nginx:1.2"}, shape="bare", delivery="dep-b")
    state, [dep_a, dep_b] = _deployed(a, b)
    config = NotifyConfig()

    def under(deployment: str | None) -> str | None:
        note = health_notification(transition("Degraded", None, deployment), state, config, NOW)
        assert note is not None
        return note["thread_under"]

    key_a = deployment_notifications(dep_a, config, NOW)[0]["idempotency_key"]
    key_b = deployment_notifications(dep_b, config, NOW)[0]["idempotency_key"]
    assert key_a.endswith(":2026-07-06T09:00:00Z") and key_b.endswith(":dep-b")
    assert under("dep-a") == key_a
    assert under("dep-b") == key_b
    assert under(dora.digest("dep-a")) == key_a  # the DORA history's compacted name
    assert under("dep-gone") is None  # no longer in the app's history: a plain message
    assert under(None) is None


def test_the_text_leaves_the_time_out_when_unknown_and_uses_the_apps_revisions_otherwise():
    state, _ = _deployed(
        event("", {"web": "nginx:1.1"}, revisions=["2.7.0", "d" * 40], delivery="dep-1")
    )
    t = {**transition("Degraded", "Healthy", "dep-1", seconds=None), "revision": None}
    note = health_notification(t, state, NotifyConfig(), NOW)
    assert note is not None
    assert note["text"] == "shop degraded after deploy 2.7.0 + ddddddd"


@pytest.mark.parametrize(
    ("seconds", "label"),
    [
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (719, "11 min"),
        (720, "12 min"),
        (3600, "1 h"),
        (3600 + 5 * 60 + 59, "1 h 5 min"),
        (86400, "1 d"),
        (3 * 86400 + 4 * 3600 + 600, "3 d 4 h"),
        (-5, "0 s"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, label: str) -> None:
    assert duration_label(seconds) == label
