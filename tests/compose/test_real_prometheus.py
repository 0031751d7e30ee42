"""A real Prometheus scrapes the exporter: every expression of both dashboards and of the
alerts evaluates, the exporter-fed panels return data (the DORA keys the figures the rules
predict), the rules evaluate healthy and a violation fires.

Extend it to the whole pipeline by starting bridge, worker and Slack connector too and passing
their targets (jobs ``synctrail-bridge``, ``synctrail-worker``, ``synctrail-slack``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import orjson
from prometheus_client import generate_latest

from connectors.broker import free_port
from connectors.exporter.fold import Folder
from tests.compose.metrics_text import http_status
from tests.compose.promharness import (
    DORA_DASHBOARD,
    Expression,
    RealPrometheus,
    Target,
    all_dashboard_expressions,
    all_expressions,
    dashboard_expressions,
    wait_for_samples,
)
from tests.connectors.test_exporter import (
    DORA_HISTORY,
    HISTORY,
    dead_letter,
    deployment,
    shop_deploy,
)
from tests.support import Service, produce, wait_for

METRIC_NAME = re.compile(r"\bsynctrail_[a-z_]+")


def exporter_series() -> set[str]:
    """Every sample name the exporter can expose (histograms with their suffixes)."""
    text = generate_latest(Folder().registry).decode()
    names = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
    return (
        names
        | {f"{n}{s}" for n in names for s in ("_bucket", "_count", "_sum")}
        | {
            "synctrail_exporter_ready",
            "synctrail_exporter_lag_records",
        }
    )


def fed_only_by(expressions: list[Expression], series: set[str]) -> list[Expression]:
    """The expressions whose synctrail series all come from ``series``."""
    return [
        e
        for e in expressions
        if METRIC_NAME.findall(e.promql) and set(METRIC_NAME.findall(e.promql)) <= series
    ]


async def dora_key(prometheus: RealPrometheus, title: str) -> float:
    """The value of the DORA dashboard's stat panel ``title``, as Grafana would get it."""
    (expression,) = [
        e for e in dashboard_expressions(DORA_DASHBOARD) if e.source.startswith(f"panel {title!r}")
    ]
    (sample,) = await prometheus.query(expression.promql)
    return float(sample["value"][1])


async def assert_dora_keys(prometheus: RealPrometheus) -> None:
    """DORA_HISTORY, exported while Prometheus scraped: 5 deployments, 2 change failures, a
    lead time of 2 h (bucket 1-2 h) and a recovery of 30 min (bucket 15-30 min)."""
    # histogram_quantile interpolates inside the one bucket that grew
    assert await dora_key(prometheus, "Change lead time (median)") == 5400.0
    assert await dora_key(prometheus, "Lead time (p90)") == 6840.0
    assert await dora_key(prometheus, "Failed deployment recovery time (median)") == 1350.0
    # increase() extrapolates each series by its own samples: near 2/5, not exactly
    rate = await dora_key(prometheus, "Change failure rate")
    assert 0.2 < rate < 0.6, rate
    assert await dora_key(prometheus, "Deployment frequency") > 0
    failed = await dora_key(prometheus, "Failed deployments")
    assert 0.5 < failed < 2, failed
    assert not math.isnan(await dora_key(prometheus, "Degraded transitions"))


async def test_dashboard_and_alert_queries_evaluate_on_a_real_prometheus(
    broker, topics, tmp_path: Path, real_prometheus
):
    # guestbook's first deployment creates its DORA series before Prometheus scrapes; the
    # findings come while it scrapes, so increase() over the range sees them
    history = [
        *HISTORY,
        deployment("argocd/web", "d7", latency_seconds=1.5),
        shop_deploy("g0", 2900.0),
    ]
    await produce(
        broker.bootstrap,
        f"{topics}metrics",
        [(e["app"].encode(), orjson.dumps(e)) for e in history],
    )
    await produce(
        broker.bootstrap, f"{topics}dead-letters", [(b"k", orjson.dumps(dead_letter("slack", 1)))]
    )
    port = free_port()
    exporter = Service(
        ["exporter"],
        {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": topics,
            "SYNCTRAIL_EXPORTER_PORT": str(port),
        },
        tmp_path / "exporter.log",
    ).start()
    try:
        await wait_for(
            lambda: http_status(f"http://127.0.0.1:{port}/readyz"),
            timeout=30,
            what="exporter ready",
        )
        prometheus = await real_prometheus([Target("synctrail-exporter", f"127.0.0.1:{port}")])
        await wait_for_samples(prometheus, 3)
        await produce(
            broker.bootstrap,
            f"{topics}metrics",
            [(e["app"].encode(), orjson.dumps(e)) for e in DORA_HISTORY],
        )

        async def dora_scraped() -> bool:
            recovered = await prometheus.query(
                'synctrail_dora_recovery_time_seconds_count{app="guestbook/guestbook"} == 1'
            )
            return bool(recovered)

        await wait_for(dora_scraped, timeout=30, what="the DORA findings scraped")
        await wait_for_samples(prometheus, 3)

        assert await prometheus.evaluate(all_expressions()) == {}
        # ...and the harness does report an expression Prometheus rejects.
        broken = await prometheus.evaluate([Expression("broken", "sum(rate(x[1m])")])
        assert "bad_data" in broken["broken"]

        fed = fed_only_by(all_dashboard_expressions(), exporter_series())
        core = {"synctrail_deployments_total", "synctrail_image_changes_total"}
        core |= {"synctrail_policy_violations_total", "synctrail_end_to_end_latency_seconds"}
        core |= {"synctrail_dora_deployments_total", "synctrail_dora_change_failures_total"}
        core |= {"synctrail_dora_lead_time_seconds", "synctrail_dora_recovery_time_seconds"}
        core |= {"synctrail_dora_health_transitions_total"}
        covered = {name for e in fed for name in METRIC_NAME.findall(e.promql)}
        assert {name.removesuffix("_bucket") for name in covered} >= core
        assert await prometheus.without_data(fed) == []
        await assert_dora_keys(prometheus)

        async def rules_evaluated() -> dict[str, tuple[str, str]] | None:
            health = await prometheus.rule_health()
            return health if all(h != "unknown" for h, _ in health.values()) else None

        health = await wait_for(rules_evaluated, timeout=20, what="every rule evaluated")
        assert {name: h for name, h in health.items() if h[0] != "ok"} == {}

        async def violation_firing() -> bool:
            return any(
                a["labels"].get("alertname") == "SynctrailPolicyViolation"
                and a["labels"].get("app") == "argocd/api"
                and a["state"] == "firing"
                for a in await prometheus.alerts()
            )

        await wait_for(violation_firing, timeout=20, what="SynctrailPolicyViolation firing")
    finally:
        exporter.stop()
