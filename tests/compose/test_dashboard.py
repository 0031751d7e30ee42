"""The Grafana dashboard: importable as provisioned, bound to the provisioned datasource, and
querying only series that synctrail's processes expose."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import generate_latest

from connectors.exporter.fold import Folder
from streams.metrics import WorkerMetrics
from tests.compose.promharness import (
    ALERTS,
    COMPOSE,
    DASHBOARD,
    dashboard_expressions,
    panels_of,
    rule_expressions,
)

DATASOURCES = COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bsynctrail_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

# The series the bridge and the Slack connector expose (their /metrics contract).
BRIDGE_SERIES = {
    "synctrail_bridge_requests_total",
    "synctrail_bridge_request_duration_seconds",
    "synctrail_bridge_request_body_bytes",
    "synctrail_bridge_produce_duration_seconds",
    "synctrail_bridge_deliveries_total",
    "synctrail_bridge_spool_records",
    "synctrail_bridge_spool_bytes",
    "synctrail_bridge_spool_drained_total",
}
SLACK_SERIES = {
    "synctrail_slack_posts_total",
    "synctrail_slack_retries_total",
    "synctrail_slack_dead_letters_total",
    "synctrail_slack_post_duration_seconds",
    "synctrail_slack_backlog_messages",
}


def registry_names(registry: Any) -> set[str]:
    text = generate_latest(registry).decode()
    return {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}


def known_series() -> set[str]:
    names = BRIDGE_SERIES | SLACK_SERIES
    names |= registry_names(Folder().registry) | registry_names(WorkerMetrics().registry)
    names |= {"synctrail_exporter_ready", "synctrail_exporter_lag_records"}
    return names | {f"{n}{suffix}" for n in names for suffix in HISTOGRAM_SUFFIXES}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def provisioned_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return source["uid"]


def test_dashboard_has_a_stable_uid_no_id_and_no_import_inputs():
    board = dashboard()
    assert board["uid"] == "synctrail-overview"
    assert board["id"] is None
    assert "${DS_" not in DASHBOARD.read_text()
    assert "__inputs" not in board and "__requires" not in board


def test_every_panel_and_query_uses_the_provisioned_datasource_uid():
    uid = provisioned_uid()
    board = dashboard()
    panels = [p for p in panels_of(board["panels"]) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_panels_have_unique_ids_and_fit_the_grid():
    panels = list(panels_of(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_covers_deploys_images_violations_ingestion_lag_latency_and_slack():
    used = {n for e in dashboard_expressions() for n in METRIC_NAME.findall(e.promql)}
    wanted = {
        "synctrail_deployments_total",
        "synctrail_image_changes_total",
        "synctrail_policy_violations_total",
        "synctrail_duplicate_deliveries_total",
        "synctrail_bridge_requests_total",
        "synctrail_bridge_request_duration_seconds_bucket",
        "synctrail_bridge_spool_records",
        "synctrail_worker_consumer_lag",
        "synctrail_end_to_end_latency_seconds_bucket",
        "synctrail_slack_posts_total",
        "synctrail_slack_retries_total",
        "synctrail_slack_dead_letters_total",
    }
    assert wanted - used == set()


def test_dashboard_and_rules_query_only_series_that_exist():
    known = known_series()
    for expression in dashboard_expressions() + rule_expressions(ALERTS):
        unknown = set(METRIC_NAME.findall(expression.promql)) - known
        assert not unknown, f"{expression.source} queries unknown series {unknown}"
