"""The exporter's DORA series on each broker (embedded and Apache Kafka): metric events and
``synctrail.dora/v1`` findings, replayed copies among them, folded into the series
docs/dora.md names, the app label capped, and the same series after a restart."""

from __future__ import annotations

import orjson

from connectors.broker import free_port
from tests.connectors.test_exporter import (
    DORA_HISTORY,
    HISTORY,
    OTHER_APP,
    ExporterFactory,
    assert_dora_folded,
    assert_history_folded,
    dead_letter,
    failure,
    produce_json,
    recovery,
    transition,
    until_ready,
)
from tests.support import produce


async def test_exporter_folds_dora_findings_once_and_rebuilds_them_after_a_restart(
    broker, topics: str, exporters: ExporterFactory
):
    await produce_json(broker.bootstrap, f"{topics}metrics", HISTORY + DORA_HISTORY)
    await produce_json(broker.bootstrap, f"{topics}dead-letters", [dead_letter("worker", 3)])
    port = free_port()
    first = exporters(port)
    before = await until_ready(first, port)
    assert_history_folded(before)
    assert_dora_folded(before)
    # the replayed copies: d2 in HISTORY, three findings in DORA_HISTORY
    assert before.value("synctrail_exporter_records_total", topic="metrics", outcome="replay") == 4
    assert first.stop() == 0, first.log()

    second = exporters(port)
    after = await until_ready(second, port)
    assert_dora_folded(after)
    folded_names = [n for n, _, _ in before.items if not n.startswith(("process_", "python_"))]
    assert any(n.startswith("synctrail_dora_") for n in folded_names)
    for name in folded_names:
        assert after.series(name) == before.series(name), name


async def test_exporter_caps_the_app_label_of_dora_series(
    broker, topics: str, exporters: ExporterFactory
):
    late = [
        failure("argocd/late-0", "l0", "operation"),
        recovery("argocd/late-1", 1, "2026-07-08T13:40:00Z", 600.0),
        transition("argocd/late-2", "Degraded", "2026-07-08T13:40:00Z"),
    ]
    records = DORA_HISTORY + late
    # one key, one partition: guestbook is read first and keeps the one label
    await produce(
        broker.bootstrap, f"{topics}metrics", [(b"one-key", orjson.dumps(r)) for r in records]
    )
    port = free_port()
    s = await until_ready(exporters(port, SYNCTRAIL_EXPORTER_MAX_APPS="1"), port)
    assert_dora_folded(s)
    other = {"app": OTHER_APP, "project": "default"}
    assert s.value("synctrail_dora_change_failures_total", **other, reason="operation") == 1
    assert s.value("synctrail_dora_recovery_time_seconds_count", **other) == 1
    degraded = {"app": OTHER_APP, "health": "Degraded"}
    assert s.value("synctrail_dora_health_transitions_total", **degraded) == 1
    assert s.label_values("synctrail_dora_change_failures_total", "app") == {
        "guestbook/guestbook",
        OTHER_APP,
    }
    assert s.value("synctrail_exporter_apps_folded_total") == 3
