"""The shipped argocd-notifications-cm: both shapes, routes the bridge serves, every completed sync."""

from __future__ import annotations

from pathlib import Path

import yaml

CM = Path(__file__).resolve().parents[3] / "deploy" / "argocd-notifications-cm.yaml"


def _data() -> dict[str, str]:
    doc = yaml.safe_load(CM.read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-notifications-cm"
    return doc["data"]


def test_both_templates_post_to_the_bridge_routes() -> None:
    data = _data()
    envelope = yaml.safe_load(data["template.synctrail-envelope"])["webhook"]["synctrail"]
    bare = yaml.safe_load(data["template.synctrail-sync-result"])["webhook"]["synctrail"]
    assert envelope["method"] == bare["method"] == "POST"
    assert envelope["path"] == "/v1/sync"
    assert bare["path"] == "/v1/sync/{{.app.metadata.namespace}}/{{.app.metadata.name}}"
    assert bare["body"].strip() == "{{toJson .app.status.operationState.syncResult}}"
    for field in ('"app"', '"operation"', '"startedAt"', '"syncResult"', '"revisions"'):
        assert field in envelope["body"]


def test_triggers_send_every_completed_operation_once() -> None:
    data = _data()
    for key, template in (
        ("trigger.on-synctrail", "synctrail-envelope"),
        ("trigger.on-synctrail-sync-result", "synctrail-sync-result"),
    ):
        rules = yaml.safe_load(data[key])
        phases = set()
        for rule in rules:
            assert rule["send"] == [template]
            assert rule["oncePer"] == "app.status.operationState?.startedAt"
            assert "revision" not in rule["oncePer"]
            phases |= {p for p in ("Succeeded", "Failed", "Error") if f"'{p}'" in rule["when"]}
        assert phases == {"Succeeded", "Failed", "Error"}


def test_the_service_sends_a_bearer_token_from_the_secret_and_every_app_is_subscribed() -> None:
    data = _data()
    service = yaml.safe_load(data["service.webhook.synctrail"])
    headers = {h["name"]: h["value"] for h in service["headers"]}
    assert headers["Authorization"] == "Bearer $synctrail-token"
    assert headers["Content-Type"] == "application/json"
    subscriptions = yaml.safe_load(data["subscriptions"])
    assert subscriptions == [{"recipients": ["synctrail"], "triggers": ["on-synctrail"]}]
