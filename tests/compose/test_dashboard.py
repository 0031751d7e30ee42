"""The Grafana dashboards (synctrail, DORA): importable as provisioned, bound to the
provisioned datasource, and querying only series that synctrail's processes expose."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from connectors.exporter.fold import Folder
from streams.metrics import WorkerMetrics
from tests.compose.promharness import (
    ALERTS,
    COMPOSE,
    DASHBOARD,
    DASHBOARDS,
    DORA_DASHBOARD,
    dashboard_expressions,
    panels_of,
    rule_expressions,
)
from tests.support import REPO

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


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def provisioned_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return source["uid"]


UIDS = {DASHBOARD: "synctrail-overview", DORA_DASHBOARD: "synctrail-dora"}
each_dashboard = pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)


def test_every_dashboard_json_file_is_a_known_dashboard():
    assert set((COMPOSE / "grafana" / "dashboards").glob("*.json")) == set(DASHBOARDS)


@each_dashboard
def test_dashboard_has_a_stable_uid_no_id_and_no_import_inputs(path: Path):
    board = dashboard(path)
    assert board["uid"] == UIDS[path]
    assert board["id"] is None
    assert "${DS_" not in path.read_text()
    assert "__inputs" not in board and "__requires" not in board


@each_dashboard
def test_every_panel_and_query_uses_the_provisioned_datasource_uid(path: Path):
    uid = provisioned_uid()
    board = dashboard(path)
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


@each_dashboard
def test_panels_have_unique_ids_and_fit_the_grid(path: Path):
    panels = list(panels_of(dashboard(path)["panels"]))
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


def test_dashboards_and_rules_query_only_series_that_exist():
    known = known_series()
    expressions = [e for path in DASHBOARDS for e in dashboard_expressions(path)]
    for expression in expressions + rule_expressions(ALERTS):
        unknown = set(METRIC_NAME.findall(expression.promql)) - known
        assert not unknown, f"{expression.source} queries unknown series {unknown}"


# --- the DORA dashboard -------------------------------------------------------------------


def docs_promql() -> list[str]:
    """The PromQL of docs/dora.md's "Prometheus metrics", one expression per entry."""
    text = (REPO / "docs" / "dora.md").read_text()
    block = re.search(r"```promql\n(.*?)```", text, re.S)
    assert block is not None
    expressions: list[str] = []
    for line in block.group(1).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(" "):
            expressions[-1] += " " + line.strip()  # a continued expression
        else:
            expressions.append(line.strip())
    return expressions


def normalised(promql: str) -> str:
    return " ".join(promql.split())


def test_dora_dashboard_derives_the_four_keys_with_the_promql_of_the_docs():
    board = dashboard(DORA_DASHBOARD)
    raw = {normalised(t["expr"]) for p in panels_of(board["panels"]) for t in p.get("targets", [])}
    documented = docs_promql()
    assert len(documented) == 4
    assert {normalised(e) for e in documented} <= raw
    titles = [p["title"] for p in panels_of(board["panels"])]
    for key in (
        "Deployment frequency",
        "Change lead time (median)",
        "Change failure rate",
        "Failed deployment recovery time (median)",
    ):
        assert key in titles


def test_dora_dashboard_selects_a_project_then_its_apps():
    variables = {v["name"]: v for v in dashboard(DORA_DASHBOARD)["templating"]["list"]}
    assert list(variables) == ["project", "app"]
    assert variables["project"]["query"]["query"] == (
        "label_values(synctrail_dora_deployments_total, project)"
    )
    assert variables["app"]["query"]["query"] == (
        'label_values(synctrail_dora_deployments_total{project=~"$project"}, app)'
    )
    # "All" apps are those of the selected projects, so series without a project label
    # (health transitions) follow the project too
    assert "allValue" not in variables["app"]
    for panel in panels_of(dashboard(DORA_DASHBOARD)["panels"]):
        for target in panel.get("targets", []):
            if "synctrail_dora_health_transitions_total" in target["expr"]:
                assert 'app=~"$app"' in target["expr"], panel["title"]
            else:
                assert 'project=~"$project", app=~"$app"' in target["expr"], panel["title"]


def test_dora_dashboard_covers_every_dora_series():
    used = {n for e in dashboard_expressions(DORA_DASHBOARD) for n in METRIC_NAME.findall(e.promql)}
    assert used == {
        "synctrail_dora_deployments_total",
        "synctrail_dora_change_failures_total",
        "synctrail_dora_lead_time_seconds_bucket",
        "synctrail_dora_recovery_time_seconds_bucket",
        "synctrail_dora_health_transitions_total",
    }
