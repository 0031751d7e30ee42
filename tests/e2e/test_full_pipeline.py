"""The whole pipeline as separate processes on the embedded broker: Argo CD's webhooks go into
the bridge, come out as Slack messages (a local Slack-compatible server, the real slack-sdk) and
as Prometheus series that a real Prometheus scrapes from every process."""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Sequence
from typing import Any

from tests.compose.promharness import (
    Expression,
    all_expressions,
    dashboard_expressions,
    wait_for_samples,
)
from tests.e2e.pipeline import (
    DEFAULT_CHANNEL,
    ROUTES,
    VIOLATIONS_CHANNEL,
    Answer,
    Webhook,
    common_env,
    fixture_webhooks,
    synctrail,
    wait_for_data,
    wait_for_values,
    with_late_retry,
)
from tests.slack_server import SlackServer
from tests.support import assert_cloudevents_headers_on_every_record, read_topic, wait_for

# ROUTES sends these apps elsewhere; every other app goes to DEFAULT_CHANNEL
ROUTED = {
    "argocd/payments-api": "#payments",  # app:payments-*
    "argocd/ingress-nginx": "#platform",  # project:platform
    "argocd/storefront": "#retail",  # namespace:storefront
}
GIT_SHA = re.compile(r"[0-9a-f]{40}")


def webhooks() -> list[Webhook]:
    """Every fixture file in order, plus 03 re-sent after guestbook's rev-d (a late retry)."""
    return with_late_retry(
        fixture_webhooks(), resend="03-guestbook-rev-b.json", after="10-guestbook-rev-d.json"
    )


def revision_words(entry: dict[str, Any]) -> list[str]:
    """How a message names a deploy's revision(s): short git SHAs, versions as they are."""
    revisions = [entry["revision"]] if entry["revision"] else entry["revisions"]
    return [r[:7] if GIT_SHA.fullmatch(r) else r for r in revisions]


def delivery_ids(answers: list[Answer]) -> dict[str, str]:
    """Webhook name → the bridge's delivery id, for every accepted webhook."""
    return {a.webhook.name: a.body["delivery_id"] for a in answers if a.status == 202}


def assert_bridge_answers(answers: list[Answer]) -> None:
    """Valid bodies accepted once Kafka acknowledged them; invalid ones refused with a 4xx."""
    for answer in answers:
        name, status = answer.webhook.name, answer.status
        if answer.webhook.valid:
            assert status == 202 and answer.body["spooled"] is False, (name, answer.body)
        elif "oversize" in name:
            assert status == 413, (name, status, answer.body)
        else:
            assert 400 <= status < 500 and status != 413, (name, status, answer.body)


async def test_every_real_deploy_is_posted_once_to_its_routed_channel(start_pipeline):
    sent = webhooks()
    announced = [w for w in sent if w.announced]
    assert len(announced) == 13  # 14 valid files, 04 is a duplicate of 03
    async with SlackServer() as slack_server:
        pipeline = start_pipeline(
            slack_server,
            SYNCTRAIL_SLACK_CHANNEL=DEFAULT_CHANNEL,
            SYNCTRAIL_SLACK_ROUTES=ROUTES,
            SYNCTRAIL_SLACK_VIOLATIONS_CHANNEL=VIOLATIONS_CHANNEL,
        )
        await pipeline.wait_ready()
        answers = await pipeline.post(sent)
        assert_bridge_answers(answers)

        await wait_for(
            lambda: len(slack_server.posts()) >= len(announced),
            timeout=60,
            what=f"{len(announced)} Slack posts",
        )
        # Idle: the worker counted every accepted webhook, the connector handled every
        # notification and has no backlog. Only then is "no more posts" true.
        accepted = [a for a in answers if a.status == 202]
        outcomes = await pipeline.wait_worker_done(len(accepted))
        slack_metrics = await pipeline.wait_slack_idle()

        posts = slack_server.posts()
        notifications = await read_topic(pipeline.bootstrap, f"{pipeline.prefix}notifications")
        on_topics = await assert_cloudevents_headers_on_every_record(
            pipeline.bootstrap, pipeline.prefix
        )

    assert {k: v for k, v in outcomes.items() if v} == {
        "deployed": 13,
        "duplicate": 1,
        "stale": 1,
    }
    assert slack_metrics.value("synctrail_slack_posts_total", outcome="posted") == 13
    # one call per post: nothing was retried or refused
    assert [c.status for c in slack_server.calls_to("chat.postMessage")] == [200] * 13

    ids = delivery_ids(answers)
    note_by_delivery = {n.value["deployment"]["delivery_id"]: n.value for n in notifications}
    assert len(notifications) == 13
    posts_by_key = collections.defaultdict(list)
    for post in posts:
        posts_by_key[post.key].append(post)

    for webhook in sent:
        if not webhook.valid:
            continue
        note = note_by_delivery.get(ids[webhook.name])
        if not webhook.announced:
            assert note is None, f"{webhook.name} must not be announced"
            continue
        assert note is not None, f"no notification for {webhook.name}"
        matching = posts_by_key[note["idempotency_key"]]
        assert len(matching) == 1, f"{webhook.name}: {len(matching)} posts"
        post = matching[0]
        app = webhook.entry["app"]
        assert post.channel == ROUTED.get(app, DEFAULT_CHANNEL), webhook.name
        assert note["idempotency_key"].startswith(f"{app}:"), note["idempotency_key"]
        assert app.split("/")[1] in post.text, (webhook.name, post.text)
        for word in revision_words(webhook.entry):
            assert word in post.text, (webhook.name, word, post.text)
        assert post.blocks, webhook.name
    assert len(posts) == 13 and len(posts_by_key) == 13
    assert slack_server.posts(VIOLATIONS_CHANNEL) == []  # no policy rule, no violation
    # headers were checked on every record of every topic these wrote: the bridge's
    # sync-events, the worker's outputs, the Slack connector's state
    assert all(on_topics[t] for t in ("sync-events", "deployments", "notifications", "metrics"))
    assert on_topics["slack-state"] >= 13


# The panels this run must fill, by title: deploys, image changes, violations, bridge
# requests and latency (the core panels), and one panel per other process.
# ("Errors" target A, the 5xx ratio, is rightly empty: no request failed.)
CORE_PANELS = (
    "Deployments",
    "Deploys per app",
    "Image changes",
    "Image changes per app",
    "Policy violations",
    "Requests by status",
    "Request latency",
    "End-to-end latency",
    "Events by outcome",
    "Processing latency",
    "Posts by outcome",
)


def panel_expressions(titles: Sequence[str]) -> list[Expression]:
    """The dashboard's queries of the panels named ``titles``; fails if one has none."""
    found = [
        e
        for e in dashboard_expressions()
        if any(e.source.startswith(f"panel {t!r}") for t in titles)
    ]
    for title in titles:
        assert any(e.source.startswith(f"panel {title!r}") for e in found), f"no panel {title!r}"
    return found


# storefront runs it after its second deploy (11); a rule added for it flags storefront
DENIED_IMAGE = "ghcr.io/acme/storefront-web:2.7.1-hotfix.1"


async def test_real_prometheus_evaluates_every_dashboard_and_alert_query_over_the_pipeline(
    broker, topics, start_pipeline, real_prometheus
):
    sent = webhooks()
    accepted = [w for w in sent if w.valid]
    async with SlackServer() as slack_server:
        pipeline = start_pipeline(slack_server, exporter=True, SYNCTRAIL_SLACK_ROUTES=ROUTES)
        # Prometheus starts with the processes; it is up once it scraped all four
        _, prometheus = await asyncio.gather(
            pipeline.wait_ready(), real_prometheus(pipeline.targets())
        )

        answers = await pipeline.post(sent)
        assert_bridge_answers(answers)
        await pipeline.wait_worker_done(len(accepted))
        # A deny rule for an image the fixtures left running: the worker flags the app
        # retroactively, so a violation reaches the exporter.
        out = await synctrail(
            common_env(broker.bootstrap, topics),
            "policy",
            "deny",
            DENIED_IMAGE,
            "--reason",
            "CVE-2026-0002 in storefront-web 2.7.1-hotfix.1",
        )
        assert "published rule" in out

        # scraped after the run: every process's series show all of it
        await wait_for_values(
            prometheus,
            {
                "sum(synctrail_deployments_total)": 13,
                "sum(synctrail_dora_deployments_total)": 13,  # the same, by result:
                'sum(synctrail_dora_deployments_total{result="failed"})': 1,  # 13-…-failed
                "sum(synctrail_policy_violations_total)": 1,
                'sum(synctrail_bridge_requests_total{status="202"})': len(accepted),
                "sum(synctrail_end_to_end_latency_seconds_count)": 13,
                "sum(synctrail_worker_events_total)": len(accepted),
                'sum(synctrail_slack_posts_total{outcome="posted"})': 14,  # 13 + the violation
            },
        )
        await wait_for_samples(prometheus, 3)  # [10s] rate windows need two scrapes

        assert await prometheus.evaluate(all_expressions()) == {}
        await wait_for_data(prometheus, panel_expressions(CORE_PANELS))

        async def rules_evaluated() -> dict[str, tuple[str, str]] | None:
            health = await prometheus.rule_health()
            return health if all(h != "unknown" for h, _ in health.values()) else None

        health = await wait_for(rules_evaluated, timeout=20, what="every rule evaluated")
        assert {name: h for name, h in health.items() if h[0] != "ok"} == {}

        violations = await prometheus.query("synctrail_policy_violations_total")
        assert [(v["metric"]["app"], v["metric"]["rule"]) for v in violations] == [
            ("argocd/storefront", "denylist")
        ]
