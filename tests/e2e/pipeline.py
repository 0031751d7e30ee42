"""The whole pipeline as child processes: bridge → worker → Slack connector (+ exporter).

``Pipeline`` holds the running processes; the ``start_pipeline`` fixture (tests/e2e/conftest.py)
builds it. ``fixture_webhooks()`` turns the shared fixture folder into the POSTs Argo CD would
send, in delivery order, and ``Pipeline.post`` sends them through the bridge.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson

from tests.compose.metrics_text import Samples, http_status, scrape
from tests.compose.promharness import Expression, RealPrometheus, Target
from tests.e2e.harness import Worker
from tests.support import REPO, SHARED_FIXTURES, Service, load_expected, read_topic, wait_for

BRIDGE_TOKEN = "e2e-bridge-token"
DEFAULT_CHANNEL = "#deployments"
VIOLATIONS_CHANNEL = "#security"
# first match wins: an app glob, a project and a destination namespace
ROUTES = "app:payments-*=#payments,project:platform=#platform,namespace:storefront=#retail"
OVERSIZE_BYTES = 2 * 1024 * 1024  # the bridge's default limit is 1 MiB


def common_env(bootstrap: str, prefix: str) -> dict[str, str]:
    """What every process of one test shares: its broker, its topics, fast group joins."""
    return {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": prefix,
        "SYNCTRAIL_LOG_LEVEL": "INFO",
        # the embedded broker: a first group join waits about the rebalance timeout
        "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
        "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
    }


class HttpService(Service):
    """A ``synctrail`` subcommand with an HTTP port: readiness probe and ``/metrics``."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Any, port: int, ready_path: str
    ) -> None:
        super().__init__(args, env, log_path)
        self.port = port
        self.ready_path = ready_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the readiness path answers 200; fail at once if the process died."""

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited early:\n{self.log()[-3000:]}")
            return await http_status(f"{self.url}{self.ready_path}") == 200

        await wait_for(ready, timeout=timeout, interval=0.1, what=f"{self.args[0]} ready")

    async def samples(self) -> Samples:
        """One scrape of this process's ``/metrics``."""
        return await scrape(f"{self.url}/metrics")


@dataclass(frozen=True)
class Webhook:
    """One POST to the bridge: a fixture file's bytes, the route Argo CD would use, the oracle."""

    name: str
    route: str
    body: bytes
    entry: dict[str, Any] = field(default_factory=dict)  # expected.json entry

    @property
    def valid(self) -> bool:
        return bool(self.entry.get("valid"))

    @property
    def announced(self) -> bool:
        """A real deploy: valid, not a duplicate and not a late retry."""
        return self.valid and not self.entry.get("duplicateOf") and not self.entry.get("late")


def fixture_webhooks() -> list[Webhook]:
    """Every file of the shared fixtures in delivery order, as Argo CD would POST it.

    Envelopes go to ``/v1/sync``, bare bodies to their ``requestPath``; invalid bodies go to
    ``/v1/sync`` (a misconfigured template), and the oversize note is replaced by a real body
    over the limit.
    """
    webhooks = []
    for entry in load_expected():
        name = entry["file"]
        body = (SHARED_FIXTURES / name).read_bytes()
        if "oversize" in name:  # the file is a note describing the body, not the body
            body = b'{"filler":"' + b"x" * OVERSIZE_BYTES + b'"}'
        route = entry.get("requestPath") or "/v1/sync"
        webhooks.append(Webhook(name, route, body, entry))
    return webhooks


def with_late_retry(webhooks: Sequence[Webhook], resend: str, after: str) -> list[Webhook]:
    """Insert a byte-identical re-POST of ``resend`` right after ``after``: by then the app
    has a newer operation, so it is a stale late retry (counted, never announced)."""
    original = next(w for w in webhooks if w.name == resend)
    late = replace(original, name=f"{resend} (late retry)", entry={**original.entry, "late": True})
    out = list(webhooks)
    out.insert(next(i for i, w in enumerate(out) if w.name == after) + 1, late)
    return out


@dataclass(frozen=True)
class Answer:
    """The bridge's answer to one webhook."""

    webhook: Webhook
    status: int
    body: dict[str, Any]


@dataclass
class Pipeline:
    """The processes of one test, all on the test's own topic prefix."""

    bootstrap: str
    prefix: str
    bridge: HttpService
    worker: Worker
    slack: HttpService
    exporter: HttpService | None = None

    def targets(self) -> list[Target]:
        """Prometheus scrape targets, with the job names compose/prometheus uses."""
        targets = [
            Target("synctrail-bridge", self.bridge.address),
            Target("synctrail-worker", f"127.0.0.1:{self.worker.port}"),
            Target("synctrail-slack", self.slack.address),
        ]
        if self.exporter is not None:
            targets.append(Target("synctrail-exporter", self.exporter.address))
        return targets

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Every process ready (the worker holds its partitions, the exporter caught up)."""
        waits = [self.bridge.wait_ready(timeout), self.worker.wait_ready(timeout)]
        waits.append(self.slack.wait_ready(timeout))
        if self.exporter is not None:
            waits.append(self.exporter.wait_ready(timeout))
        await asyncio.gather(*waits)

    async def post(self, webhooks: Sequence[Webhook]) -> list[Answer]:
        """POST each webhook through the bridge in order, one at a time, as Argo CD does."""
        headers = {"Authorization": f"Bearer {BRIDGE_TOKEN}", "Content-Type": "application/json"}
        answers = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for webhook in webhooks:
                async with session.post(
                    f"{self.bridge.url}{webhook.route}", data=webhook.body, headers=headers
                ) as response:
                    raw = await response.read()
                    try:
                        body = orjson.loads(raw) if raw else {}
                    except orjson.JSONDecodeError:
                        body = {"text": raw.decode(errors="replace")}
                    answers.append(Answer(webhook, response.status, body))
        return answers

    async def worker_outcomes(self) -> dict[str, float]:
        """``synctrail_worker_events_total`` by outcome."""
        samples = await scrape(f"{self.worker.url}/metrics")
        return {
            dict(labels)["outcome"]: value
            for labels, value in samples.series("synctrail_worker_events_total").items()
        }

    async def wait_worker_done(self, events: int, timeout: float = 60.0) -> dict[str, float]:
        """Wait until the worker counted ``events`` sync events (by outcome) and return the
        counts. An outcome is counted only after the records it produced were acknowledged,
        so this is exact where the lag gauge (refreshed every 5 s) would only be slow."""

        async def done() -> dict[str, float] | None:
            outcomes = await self.worker_outcomes()
            return outcomes if sum(outcomes.values()) >= events else None

        return await wait_for(done, timeout=timeout, interval=0.1, what=f"worker: {events} events")

    async def wait_slack_idle(self, timeout: float = 60.0) -> Samples:
        """Wait until the connector handled every notification on the topic (posted, skipped
        or dead-lettered) and reports an empty backlog; returns its last scrape."""
        notifications = await read_topic(self.bootstrap, f"{self.prefix}notifications")

        async def idle() -> Samples | None:
            samples = await self.slack.samples()
            handled = sum(samples.series("synctrail_slack_posts_total").values())
            backlog = samples.value("synctrail_slack_backlog_messages")
            return samples if handled >= len(notifications) and backlog == 0 else None

        return await wait_for(idle, timeout=timeout, interval=0.1, what="slack connector idle")


async def wait_for_values(
    prometheus: RealPrometheus, want: dict[str, float], timeout: float = 30.0
) -> None:
    """Wait until each PromQL expression of ``want`` evaluates to its value (an empty result
    counts as 0); on timeout, fail naming what Prometheus answered last."""
    seen: dict[str, float] = {}

    async def reached() -> bool:
        for promql in want:
            result = await prometheus.query(promql)
            seen[promql] = float(result[0]["value"][1]) if result else 0.0
        return seen == want

    try:
        await wait_for(reached, timeout=timeout, interval=0.2, what="Prometheus values")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: wanted {want}, last answers {seen}") from None


async def wait_for_data(
    prometheus: RealPrometheus, expressions: Sequence[Expression], timeout: float = 20.0
) -> None:
    """Wait until every expression returns data. ``increase()`` and ``rate()`` need two samples
    of a series, so a counter that appeared in the last scrape has data one scrape later."""
    missing: list[str] = []

    async def all_have_data() -> bool:
        missing[:] = await prometheus.without_data(expressions)
        return not missing

    try:
        await wait_for(all_have_data, timeout=timeout, interval=0.5, what="data")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: still without data: {missing}") from None


async def synctrail(env: dict[str, str], *args: str) -> str:
    """Run a one-shot ``synctrail`` command (e.g. ``policy deny``); its stdout, or fail."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.cli",
        *args,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"synctrail {' '.join(args)}: {err.decode()}"
    return out.decode()
