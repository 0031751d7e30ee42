"""The metrics exporter: folding rules (pure) and the process on the real embedded broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
import pytest

from connectors.broker import EmbeddedBroker, free_port
from connectors.exporter.fold import OTHER_APP, BoundedSet, Folder
from streams.domain import dora as dora_rules
from streams.domain.records import DEAD_LETTER_V1, METRIC_V1, DoraEvent
from tests.compose.metrics_text import Samples, http_status, scrape
from tests.support import Service, produce, wait_for


def metric(kind: str, app: str, delivery_id: str | None, **fields: Any) -> dict[str, Any]:
    """A ``synctrail.metric/v1`` event as the worker writes it."""
    event: dict[str, Any] = {
        "schema": METRIC_V1,
        "kind": kind,
        "app": app,
        "project": fields.pop("project", "default"),
        "timestamp": fields.pop("timestamp", 1_790_000_000.0),
        "delivery_id": delivery_id,
    }
    event.update(fields)
    return event


def deployment(app: str, delivery_id: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("latency_seconds", 0.2)
    fields.setdefault("running_images", 2)
    fields.setdefault("image_changes", 1)
    fields.setdefault("phase", "Succeeded")
    fields.setdefault("initial", False)
    return metric("deployment", app, delivery_id, **fields)


def dora(kind: str, app: str, **fields: Any) -> dict[str, Any]:
    """A ``synctrail.dora/v1`` finding as the worker writes it (built with its record type)."""
    fields.setdefault("project", "default")
    fields.setdefault("timestamp", 1_790_000_000.0)
    fields.setdefault("delivery_id", "delivery")
    fields.setdefault("at", "2026-07-08T13:40:00Z")
    event = DoraEvent(kind=kind, app=app, **fields)  # type: ignore[arg-type]
    return cast(dict[str, Any], msgspec.to_builtins(event))


def failure(app: str, deployment: str, reason: str, **fields: Any) -> dict[str, Any]:
    return dora("change_failure", app, deployment=deployment, reason=reason, **fields)


def lead_time(app: str, deployment: str, revision: str, seconds: float, **f: Any) -> dict[str, Any]:
    return dora("lead_time", app, deployment=deployment, revision=revision, seconds=seconds, **f)


def recovery(app: str, episode: int, started_at: str, seconds: float, **f: Any) -> dict[str, Any]:
    return dora("recovery", app, episode=episode, started_at=started_at, seconds=seconds, **f)


def transition(app: str, health: str, at: str, **fields: Any) -> dict[str, Any]:
    return dora("health_transition", app, health=health, at=at, **fields)


def dead_letter(component: str, offset: int | None) -> dict[str, Any]:
    return {
        "schema": DEAD_LETTER_V1,
        "component": component,
        "reason": "could not parse",
        "error_type": "ValueError",
        "source_topic": "synctrail.sync-events",
        "source_partition": 0 if offset is not None else None,
        "source_offset": offset,
        "key": "argocd/guestbook",
        "original": None,
        "original_text": "{not json",
        "failed_at": "2026-11-27T10:00:00Z",
    }


def _raw(value: Any) -> bytes | None:
    """A record value as the exporter reads it from the topic."""
    return None if value is None else orjson.dumps(value)


def folded(folder: Folder) -> Samples:
    from prometheus_client import generate_latest

    return Samples.parse(generate_latest(folder.registry).decode())


# --- folding rules, no broker -------------------------------------------------------------


def test_a_deployment_counts_its_app_images_changes_latency_and_time():
    folder = Folder()
    folder.fold_metric(_raw(deployment("argocd/web", "d1", image_changes=3, timestamp=100.0)))
    folder.fold_metric(_raw(deployment("argocd/web", "d2", image_changes=0, timestamp=200.0)))
    s = folded(folder)
    assert s.value("synctrail_deployments_total", app="argocd/web", project="default") == 2
    assert s.value("synctrail_image_changes_total", app="argocd/web") == 3
    assert s.value("synctrail_last_deploy_timestamp_seconds", app="argocd/web") == 200.0
    assert s.value("synctrail_app_images", app="argocd/web") == 2
    assert s.value("synctrail_end_to_end_latency_seconds_count") == 2
    assert s.value("synctrail_end_to_end_latency_seconds_bucket", le="0.25") == 2


def test_last_deploy_never_moves_back_to_an_older_event():
    folder = Folder()
    folder.fold_metric(_raw(deployment("argocd/web", "new", timestamp=500.0)))
    folder.fold_metric(_raw(deployment("argocd/web", "old", timestamp=100.0)))
    assert folded(folder).value("synctrail_last_deploy_timestamp_seconds", app="argocd/web") == 500


def test_duplicates_violations_and_resyncs_land_in_their_series():
    folder = Folder()
    folder.fold_metric(_raw(metric("duplicate", "argocd/web", "d1")))
    folder.fold_metric(_raw(metric("violation", "argocd/web", "d2", rule="denylist")))
    folder.fold_metric(_raw(metric("violation", "argocd/web", "d2", rule="unexpected")))
    folder.fold_metric(_raw(metric("resync", "argocd/web", "d3", running_images=5)))
    folder.fold_metric(_raw(metric("stale", "argocd/web", "d4")))
    s = folded(folder)
    assert s.value("synctrail_duplicate_deliveries_total", app="argocd/web") == 1
    assert s.value("synctrail_policy_violations_total", app="argocd/web", rule="denylist") == 1
    assert s.value("synctrail_policy_violations_total", app="argocd/web", rule="unexpected") == 1
    assert s.value("synctrail_app_images", app="argocd/web") == 5
    assert s.value("synctrail_exporter_events_total", kind="stale") == 1
    assert s.series("synctrail_deployments_total") == {}


def test_a_replayed_fact_is_folded_once():
    folder = Folder()
    event = deployment("argocd/web", "d1", image_changes=2)
    assert folder.fold_metric(_raw(event)) == "folded"
    assert folder.fold_metric(_raw(dict(event, latency_seconds=9.0))) == "replay"
    s = folded(folder)
    assert s.value("synctrail_deployments_total", app="argocd/web", project="default") == 1
    assert s.value("synctrail_image_changes_total", app="argocd/web") == 2
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="replay") == 1


def test_violations_of_one_delivery_count_per_rule_and_image():
    folder = Folder()
    folder.fold_metric(_raw(metric("violation", "argocd/web", "d1", rule="denylist", image="a:1")))
    folder.fold_metric(_raw(metric("violation", "argocd/web", "d1", rule="denylist", image="b:1")))
    folder.fold_metric(_raw(metric("violation", "argocd/web", "d1", rule="denylist", image="b:1")))
    s = folded(folder)
    assert s.value("synctrail_policy_violations_total", app="argocd/web", rule="denylist") == 2


def test_events_without_a_delivery_id_are_never_deduplicated():
    folder = Folder()
    folder.fold_metric(_raw(metric("violation", "argocd/web", None, rule="denylist")))
    folder.fold_metric(_raw(metric("violation", "argocd/web", None, rule="denylist")))
    s = folded(folder)
    assert s.value("synctrail_policy_violations_total", app="argocd/web", rule="denylist") == 2


def test_apps_beyond_the_cap_fold_into_other_and_are_counted_once_each():
    folder = Folder(max_apps=2)
    for i, app in enumerate(("ns/a", "ns/b", "ns/c", "ns/d", "ns/c")):
        folder.fold_metric(_raw(deployment(app, f"delivery-{i}")))
    s = folded(folder)
    apps = s.label_values("synctrail_deployments_total", "app")
    assert apps == {"ns/a", "ns/b", OTHER_APP}
    assert s.value("synctrail_deployments_total", app=OTHER_APP, project="default") == 3
    assert s.value("synctrail_exporter_apps_folded_total") == 2
    # A per-app image count over many apps means nothing: _other gets none.
    assert s.value("synctrail_app_images", app=OTHER_APP) is None


def test_dead_letters_count_by_component_and_replays_of_one_source_record_once():
    folder = Folder()
    folder.fold_dead_letter(_raw(dead_letter("worker", 7)))
    folder.fold_dead_letter(_raw(dead_letter("worker", 7)))  # the worker retried the same input
    folder.fold_dead_letter(_raw(dead_letter("bridge", None)))
    folder.fold_dead_letter(_raw(dead_letter("bridge", None)))
    folder.fold_dead_letter(_raw(dict(dead_letter("mystery", 1))))
    s = folded(folder)
    assert s.value("synctrail_dead_letters_total", component="worker") == 1
    assert s.value("synctrail_dead_letters_total", component="bridge") == 2
    assert s.value("synctrail_dead_letters_total", component="other") == 1
    assert s.value("synctrail_dead_letters_total", component="slack") == 0


def test_records_that_are_not_metric_events_are_counted_as_invalid_not_folded():
    folder = Folder()
    assert folder.fold_metric(_raw(None)) == "invalid"
    assert (
        folder.fold_metric(_raw({"schema": "synctrail.metric/v1", "kind": "deployment"}))
        == "invalid"
    )
    assert folder.fold_metric(_raw(metric("teleport", "ns/a", "x"))) == "unknown_kind"
    s = folded(folder)
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="invalid") == 2
    assert s.series("synctrail_deployments_total") == {}


# --- DORA series ---------------------------------------------------------------------------


def test_dora_deployments_count_by_result_from_the_operation_phase():
    folder = Folder()
    folder.fold_metric(_raw(deployment("argocd/web", "d1", phase="Succeeded")))
    folder.fold_metric(_raw(deployment("argocd/web", "d2", phase="Failed")))
    folder.fold_metric(_raw(deployment("argocd/web", "d3", phase="Error")))
    folder.fold_metric(_raw(deployment("argocd/api", "d4", project="pay", phase="Succeeded")))
    s = folded(folder)
    web = {"app": "argocd/web", "project": "default"}
    assert s.value("synctrail_dora_deployments_total", **web, result="succeeded") == 1
    assert s.value("synctrail_dora_deployments_total", **web, result="failed") == 2
    api = {"app": "argocd/api", "project": "pay"}
    assert s.value("synctrail_dora_deployments_total", **api, result="succeeded") == 1
    # an app's first deployment creates its DORA series at 0, so increase() sees what follows
    assert s.value("synctrail_dora_deployments_total", **api, result="failed") == 0
    assert s.value("synctrail_dora_change_failures_total", **api, reason="degraded") == 0
    assert s.value("synctrail_dora_lead_time_seconds_count", **api) == 0
    assert (
        s.value("synctrail_dora_health_transitions_total", app="argocd/api", health="Healthy") == 0
    )


def test_dora_findings_fold_into_failures_histograms_and_transitions():
    folder = Folder()
    outcomes = [
        folder.fold_metric(_raw(e))
        for e in (
            failure("argocd/web", "d1", "operation"),
            failure("argocd/web", "d2", "degraded"),
            failure("argocd/web", "d3", "rollback"),
            lead_time("argocd/web", "d2", "rev-b", 7200.0),  # 2 h: on a bucket bound
            lead_time("argocd/web", "d2", "rev-c", 7201.0),  # a second source of d2
            recovery("argocd/web", 1, "2026-07-08T13:40:00Z", 1800.0),
            transition("argocd/web", "Degraded", "2026-07-08T13:40:00Z"),
            transition("argocd/web", "Healthy", "2026-07-08T14:10:00Z"),
        )
    ]
    assert outcomes == ["folded"] * 8
    s = folded(folder)
    web = {"app": "argocd/web", "project": "default"}
    for reason in ("operation", "degraded", "rollback"):
        assert s.value("synctrail_dora_change_failures_total", **web, reason=reason) == 1
    assert s.value("synctrail_dora_lead_time_seconds_count", **web) == 2
    assert s.value("synctrail_dora_lead_time_seconds_sum", **web) == 14401.0
    assert s.value("synctrail_dora_lead_time_seconds_bucket", **web, le="3600.0") == 0
    assert s.value("synctrail_dora_lead_time_seconds_bucket", **web, le="7200.0") == 1
    assert s.value("synctrail_dora_lead_time_seconds_bucket", **web, le="14400.0") == 2
    assert s.value("synctrail_dora_recovery_time_seconds_bucket", **web, le="900.0") == 0
    assert s.value("synctrail_dora_recovery_time_seconds_bucket", **web, le="1800.0") == 1
    assert s.value("synctrail_dora_recovery_time_seconds_count", **web) == 1
    for health in ("Degraded", "Healthy"):
        labels = {"app": "argocd/web", "health": health}
        assert s.value("synctrail_dora_health_transitions_total", **labels) == 1
    assert s.value("synctrail_exporter_events_total", kind="lead_time") == 2


def test_dora_histograms_have_the_buckets_of_the_rules():
    folder = Folder()
    folder.fold_metric(_raw(lead_time("argocd/web", "d1", "rev-a", 60.0)))
    s = folded(folder)
    bounds = s.label_values("synctrail_dora_lead_time_seconds_bucket", "le") - {"+Inf"}
    assert sorted(float(b) for b in bounds) == list(dora_rules.BUCKETS)


def test_a_replayed_dora_finding_is_folded_once_by_its_identity():
    folder = Folder()
    findings = [
        failure("argocd/web", "d1", "degraded"),
        lead_time("argocd/web", "d1", "rev-a", 600.0),
        recovery("argocd/web", 3, "2026-07-08T13:40:00Z", 1800.0),
        transition("argocd/web", "Degraded", "2026-07-08T13:40:00Z"),
    ]
    for event in findings:
        assert folder.fold_metric(_raw(event)) == "folded"
    # the worker replays the facts: the same findings again, decided at another moment
    for event in findings:
        again = dict(event, timestamp=1_790_000_999.0, delivery_id="redelivery")
        assert folder.fold_metric(_raw(again)) == "replay"
    # a different identity is a different finding
    assert folder.fold_metric(_raw(failure("argocd/web", "d2", "degraded"))) == "folded"
    assert folder.fold_metric(_raw(lead_time("argocd/web", "d1", "rev-b", 60.0))) == "folded"
    other_episode = recovery("argocd/web", 4, "2026-07-09T00:00:00Z", 60.0)
    assert folder.fold_metric(_raw(other_episode)) == "folded"
    later = transition("argocd/web", "Degraded", "2026-07-08T15:00:00Z")
    assert folder.fold_metric(_raw(later)) == "folded"
    s = folded(folder)
    web = {"app": "argocd/web", "project": "default"}
    assert s.value("synctrail_dora_change_failures_total", **web, reason="degraded") == 2
    assert s.value("synctrail_dora_lead_time_seconds_count", **web) == 2
    assert s.value("synctrail_dora_recovery_time_seconds_count", **web) == 2
    degraded = {"app": "argocd/web", "health": "Degraded"}
    assert s.value("synctrail_dora_health_transitions_total", **degraded) == 2
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="replay") == 4


def test_dora_findings_of_apps_beyond_the_cap_fold_into_other():
    folder = Folder(max_apps=1)
    folder.fold_metric(_raw(deployment("ns/a", "a1")))
    folder.fold_metric(_raw(failure("ns/b", "b1", "operation")))
    folder.fold_metric(_raw(lead_time("ns/c", "c1", "rev", 90.0)))
    s = folded(folder)
    assert s.label_values("synctrail_dora_change_failures_total", "app") == {"ns/a", OTHER_APP}
    other = {"app": OTHER_APP, "project": "default"}
    assert s.value("synctrail_dora_change_failures_total", **other, reason="operation") == 1
    assert s.value("synctrail_dora_lead_time_seconds_count", **other) == 1
    assert s.value("synctrail_exporter_apps_folded_total") == 2


def test_unknown_dora_kinds_and_label_values_are_tolerated_not_invented():
    folder = Folder()
    raw = dict(dora("lead_time", "ns/a"), kind="flow_time")
    assert folder.fold_metric(_raw(raw)) == "unknown_kind"
    odd = dict(failure("ns/a", "d1", "operation"), reason="chaos")
    assert folder.fold_metric(_raw(odd)) == "folded"
    odd_health = transition("ns/a", "Progressing", "2026-07-08T13:40:00Z")
    assert folder.fold_metric(_raw(odd_health)) == "folded"
    no_seconds = dict(lead_time("ns/a", "d1", "rev", 1.0), seconds="soon")
    assert folder.fold_metric(_raw(no_seconds)) == "folded"
    assert (
        folder.fold_metric(_raw({"schema": "synctrail.dora/v1", "kind": "recovery"})) == "invalid"
    )
    assert folder.fold_metric(_raw(dict(failure("ns/a", "d", "operation"), schema="x/v9"))) == (
        "invalid"
    )
    s = folded(folder)
    labels = {"app": "ns/a", "project": "default"}
    assert s.value("synctrail_dora_change_failures_total", **labels, reason="other") == 1
    assert s.value("synctrail_dora_health_transitions_total", app="ns/a", health="other") == 1
    assert s.value("synctrail_dora_lead_time_seconds_count", **labels) is None
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="invalid") == 2


def test_an_identity_field_of_the_wrong_type_is_folded_not_fatal():
    folder = Folder()
    odd = deployment("ns/a", "d1") | {"delivery_id": ["d1"]}
    assert folder.fold_metric(_raw(odd)) == "folded"
    finding = failure("ns/a", "d1", "operation") | {"deployment": {"id": "d1"}}
    assert folder.fold_metric(_raw(finding)) == "folded"
    assert folder.fold_metric(_raw(finding)) == "folded"  # no identity: never deduplicated
    s = folded(folder)
    labels = {"app": "ns/a", "project": "default"}
    assert s.value("synctrail_deployments_total", **labels) == 1
    assert s.value("synctrail_dora_change_failures_total", **labels, reason="operation") == 2


def test_bounded_set_forgets_the_oldest_beyond_its_capacity():
    seen = BoundedSet(2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    assert seen.add("c")  # evicts "b", the least recently seen
    assert "b" not in seen and "a" in seen and len(seen) == 2


# --- the process, on the real broker --------------------------------------------------------

ExporterFactory = Callable[..., Service]


@pytest.fixture
async def exporters(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> AsyncIterator[ExporterFactory]:
    """Start ``synctrail exporter`` processes on this test's topics; all stopped at the end."""
    started: list[Service] = []

    def start(port: int, **env: str) -> Service:
        service = Service(
            ["exporter"],
            {
                "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
                "SYNCTRAIL_TOPIC_PREFIX": topics,
                "SYNCTRAIL_EXPORTER_PORT": str(port),
                "SYNCTRAIL_LOG_LEVEL": "INFO",
                **env,
            },
            tmp_path / f"exporter-{len(started)}.log",
        ).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


async def until_ready(service: Service, port: int) -> Samples:
    """Wait for /readyz, then return a scrape of /metrics."""

    async def ready() -> bool:
        assert service.process is not None and service.process.poll() is None, service.log()
        return await http_status(f"http://127.0.0.1:{port}/readyz") == 200

    await wait_for(ready, timeout=30, interval=0.1, what="exporter /readyz")
    return await scrape(f"http://127.0.0.1:{port}/metrics")


async def produce_json(bootstrap: str, topic: str, values: list[dict[str, Any]]) -> None:
    await produce(bootstrap, topic, [(v.get("app", "k").encode(), orjson.dumps(v)) for v in values])


HISTORY = [
    deployment("argocd/web", "d1", image_changes=2, timestamp=1000.0, latency_seconds=0.04),
    deployment("argocd/web", "d2", image_changes=1, timestamp=2000.0, latency_seconds=0.3),
    deployment("argocd/api", "d3", project="payments", image_changes=4, timestamp=1500.0),
    metric("duplicate", "argocd/web", "d4"),
    metric("violation", "argocd/api", "d3", rule="denylist"),
    # The worker crashed after emitting d2 and emitted it again: one fact, not two.
    deployment("argocd/web", "d2", image_changes=1, timestamp=2000.0, latency_seconds=0.9),
]


# guestbook's worked example of docs/dora.md as the worker reports it, with replayed copies.
def shop_deploy(delivery_id: str, timestamp: float, **fields: Any) -> dict[str, Any]:
    """A guestbook deployment (no latency: HISTORY's latency figures stay its own)."""
    fields.setdefault("latency_seconds", None)
    return deployment(
        "guestbook/guestbook", delivery_id, project="shop", timestamp=timestamp, **fields
    )


DORA_HISTORY = [
    shop_deploy("g1", 3000.0),
    shop_deploy("g2", 3100.0),
    lead_time("guestbook/guestbook", "g2", "rev-b", 7200.0, project="shop"),
    shop_deploy("g3", 3200.0),
    transition("guestbook/guestbook", "Degraded", "2026-07-08T13:40:00Z", project="shop"),
    failure("guestbook/guestbook", "g3", "degraded", project="shop"),
    transition("guestbook/guestbook", "Healthy", "2026-07-08T14:10:00Z", project="shop"),
    recovery("guestbook/guestbook", 1, "2026-07-08T13:40:00Z", 1800.0, project="shop"),
    shop_deploy("g4", 3300.0),
    shop_deploy("g5", 3400.0, phase="Failed"),
    failure("guestbook/guestbook", "g5", "operation", project="shop"),
    # the worker restarted and replayed the Degraded transition: its findings come again
    transition("guestbook/guestbook", "Degraded", "2026-07-08T13:40:00Z", project="shop"),
    failure("guestbook/guestbook", "g3", "degraded", project="shop", timestamp=9.0),
    recovery("guestbook/guestbook", 1, "2026-07-08T13:40:00Z", 1800.0, project="shop"),
]


def assert_dora_folded(s: Samples) -> None:
    """docs/dora.md's worked example: 5 deployments (4 succeeded), 2 change failures, one
    recovery of 30 min, one lead time of 2 h, one Degraded and one Healthy transition."""
    gb = {"app": "guestbook/guestbook", "project": "shop"}
    assert s.value("synctrail_dora_deployments_total", **gb, result="succeeded") == 4
    assert s.value("synctrail_dora_deployments_total", **gb, result="failed") == 1
    assert s.value("synctrail_dora_change_failures_total", **gb, reason="degraded") == 1
    assert s.value("synctrail_dora_change_failures_total", **gb, reason="operation") == 1
    assert s.value("synctrail_dora_change_failures_total", **gb, reason="rollback") == 0
    assert s.value("synctrail_dora_lead_time_seconds_bucket", **gb, le="3600.0") == 0
    assert s.value("synctrail_dora_lead_time_seconds_bucket", **gb, le="7200.0") == 1
    assert s.value("synctrail_dora_lead_time_seconds_sum", **gb) == 7200.0
    assert s.value("synctrail_dora_recovery_time_seconds_bucket", **gb, le="900.0") == 0
    assert s.value("synctrail_dora_recovery_time_seconds_bucket", **gb, le="1800.0") == 1
    assert s.value("synctrail_dora_recovery_time_seconds_bucket", **gb, le="+Inf") == 1
    assert s.value("synctrail_dora_recovery_time_seconds_count", **gb) == 1
    for health in ("Degraded", "Healthy"):
        labels = {"app": "guestbook/guestbook", "health": health}
        assert s.value("synctrail_dora_health_transitions_total", **labels) == 1


def assert_history_folded(s: Samples) -> None:
    assert s.value("synctrail_deployments_total", app="argocd/web", project="default") == 2
    assert s.value("synctrail_deployments_total", app="argocd/api", project="payments") == 1
    assert s.value("synctrail_image_changes_total", app="argocd/web") == 3
    assert s.value("synctrail_image_changes_total", app="argocd/api") == 4
    assert s.value("synctrail_duplicate_deliveries_total", app="argocd/web") == 1
    assert s.value("synctrail_policy_violations_total", app="argocd/api", rule="denylist") == 1
    assert s.value("synctrail_last_deploy_timestamp_seconds", app="argocd/web") == 2000.0
    assert s.value("synctrail_last_deploy_timestamp_seconds", app="argocd/api") == 1500.0
    assert s.value("synctrail_end_to_end_latency_seconds_count") == 3
    assert s.value("synctrail_dead_letters_total", component="worker") == 1
    assert s.value("synctrail_exporter_ready") == 1


async def test_exporter_serves_series_folded_from_the_metrics_topic(broker, topics, exporters):
    await produce_json(broker.bootstrap, f"{topics}metrics", HISTORY + DORA_HISTORY)
    await produce_json(broker.bootstrap, f"{topics}dead-letters", [dead_letter("worker", 3)])
    port = free_port()
    service = exporters(port)
    s = await until_ready(service, port)
    assert_history_folded(s)
    assert_dora_folded(s)
    # the replayed copies: d2 in HISTORY, three findings in DORA_HISTORY
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="replay") == 4
    assert await http_status(f"http://127.0.0.1:{port}/healthz") == 200

    # Live events after start are folded too.
    await produce_json(broker.bootstrap, f"{topics}metrics", [deployment("argocd/web", "d9")])

    async def third_deploy() -> bool:
        s = await scrape(f"http://127.0.0.1:{port}/metrics")
        return s.value("synctrail_deployments_total", app="argocd/web", project="default") == 3

    await wait_for(third_deploy, timeout=15, what="a live deployment folded")
    # ...and live DORA findings, a replayed copy of an old one not counted again.
    late = [
        failure("guestbook/guestbook", "g3", "degraded", project="shop"),
        failure("guestbook/guestbook", "g6", "rollback", project="shop"),
    ]
    await produce_json(broker.bootstrap, f"{topics}metrics", late)
    gb = {"app": "guestbook/guestbook", "project": "shop"}

    async def rollback_failure() -> bool:
        s = await scrape(f"http://127.0.0.1:{port}/metrics")
        return s.value("synctrail_dora_change_failures_total", **gb, reason="rollback") == 1

    await wait_for(rollback_failure, timeout=15, what="a live change failure folded")
    s = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert s.value("synctrail_dora_change_failures_total", **gb, reason="degraded") == 1
    assert service.stop() == 0, service.log()  # SIGTERM is a clean exit


async def test_a_restarted_exporter_rebuilds_the_same_series_from_kafka(broker, topics, exporters):
    await produce_json(broker.bootstrap, f"{topics}metrics", HISTORY)
    await produce_json(broker.bootstrap, f"{topics}dead-letters", [dead_letter("worker", 3)])
    port = free_port()
    first = exporters(port)
    before = await until_ready(first, port)
    assert_history_folded(before)
    assert first.stop() == 0, first.log()

    second = exporters(port)
    after = await until_ready(second, port)
    assert_history_folded(after)
    folded_names = [n for n, _, _ in before.items if not n.startswith(("process_", "python_"))]
    for name in folded_names:
        assert after.series(name) == before.series(name), name


async def test_exporter_caps_apps_and_counts_the_folded_ones(broker, topics, exporters):
    apps = ["argocd/a", "argocd/b", "argocd/c", "argocd/d"]
    await produce_json(
        broker.bootstrap,
        f"{topics}metrics",
        [deployment(app, f"{app}-1") for app in apps] + [deployment("argocd/c", "c-2")],
    )
    port = free_port()
    s = await until_ready(exporters(port, SYNCTRAIL_EXPORTER_MAX_APPS="2"), port)
    series = s.series("synctrail_deployments_total")
    named = {dict(labels)["app"] for labels in series} - {OTHER_APP}
    assert len(named) == 2 and named <= set(apps)
    assert sum(series.values()) == 5
    assert s.value("synctrail_exporter_apps_folded_total") == 2
    assert s.value("synctrail_deployments_total", app=OTHER_APP, project="default") in {2, 3}
    dora_series = s.series("synctrail_dora_deployments_total")
    assert {dict(labels)["app"] for labels in dora_series} == named | {OTHER_APP}
    assert sum(dora_series.values()) == 5


async def test_duplicate_delivery_ids_on_the_topic_are_not_double_counted(
    broker, topics, exporters
):
    event = deployment("argocd/web", "same-delivery", image_changes=5)
    await produce_json(broker.bootstrap, f"{topics}metrics", [event, event, event])
    port = free_port()
    s = await until_ready(exporters(port), port)
    assert s.value("synctrail_deployments_total", app="argocd/web", project="default") == 1
    assert s.value("synctrail_image_changes_total", app="argocd/web") == 5
    assert s.value("synctrail_exporter_records_total", topic="metrics", outcome="replay") == 2


async def test_exporter_without_kafka_is_alive_but_not_ready_and_withholds_series(
    tmp_path: Path,
):
    port = free_port()
    service = Service(
        ["exporter"],
        {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens there
            "SYNCTRAIL_TOPIC_PREFIX": "nowhere.",
            "SYNCTRAIL_EXPORTER_PORT": str(port),
        },
        tmp_path / "exporter.log",
    ).start()
    try:
        await wait_for(
            lambda: http_status(f"http://127.0.0.1:{port}/healthz"),
            timeout=20,
            what="exporter /healthz",
        )
        assert await http_status(f"http://127.0.0.1:{port}/readyz") == 503
        s = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert s.value("synctrail_exporter_ready") == 0
        assert s.series("synctrail_deployments_total") == {}
        assert service.stop() == 0, service.log()  # SIGTERM while still retrying Kafka
    finally:
        service.stop()
