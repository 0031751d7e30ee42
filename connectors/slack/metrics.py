"""The connector's Prometheus series and its small HTTP server (/metrics, /healthz)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

POST_OUTCOMES = ("posted", "skipped_duplicate", "dead_lettered")
RETRY_REASONS = ("rate_limited", "server_error", "network")


class SlackMetrics:
    """Every series of ``synctrail slack``, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.posts = Counter(
            "synctrail_slack_posts",
            "Notifications handled, by outcome: posted to Slack, skipped as already posted, or "
            "dead-lettered.",
            ["outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "synctrail_slack_retries",
            "Retried Slack calls, by reason: 429 rate limited, 5xx or transient error, network.",
            ["reason"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "synctrail_slack_dead_letters",
            "Notifications sent to <prefix>dead-letters by the Slack connector.",
            registry=self.registry,
        )
        self.post_duration = Histogram(
            "synctrail_slack_post_duration_seconds",
            "Duration of one Slack post call (chat.postMessage or webhook), seconds.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.backlog = Gauge(
            "synctrail_slack_backlog_messages",
            "Notifications on the topic not yet handled (not committed) by the connector.",
            registry=self.registry,
        )
        self.up = Gauge(
            "synctrail_slack_consuming",
            "1 while the connector holds its partitions and consumes notifications.",
            registry=self.registry,
        )
        # Publish every label value from the start, so rate() works from the first scrape.
        for outcome in POST_OUTCOMES:
            self.posts.labels(outcome)
        for reason in RETRY_REASONS:
            self.retries.labels(reason)

    def render(self) -> bytes:
        """The text exposition."""
        return generate_latest(self.registry)


def make_app(metrics: SlackMetrics, healthy: Callable[[], bool]) -> web.Application:
    """``/metrics`` and ``/healthz`` (200 while the consume loop runs, else 503)."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "starting"}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    return app
