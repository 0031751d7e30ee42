"""The shipped argocd-notifications-cm: both shapes, routes, every completed sync, health, commit."""

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
    assert subscriptions == [
        {"recipients": ["synctrail"], "triggers": ["on-synctrail", "on-synctrail-health"]}
    ]


def test_the_health_trigger_sends_the_envelope_each_time_the_app_turns_degraded_or_healthy() -> (
    None
):
    rules = yaml.safe_load(_data()["trigger.on-synctrail-health"])
    statuses = []
    for rule in rules:
        assert rule["send"] == ["synctrail-envelope"]
        # only after a completed operation, whose start identifies it (as on-synctrail's)
        assert rule["when"].startswith("app.status.operationState != nil and ")
        assert "phase in ['Succeeded', 'Error', 'Failed']" in rule["when"]
        # edge-triggered: a oncePer on the operation would use up the Healthy key before a
        # degradation, so the return to Healthy would never be sent
        assert "oncePer" not in rule
        statuses += [s for s in ("Degraded", "Healthy") if f"== '{s}'" in rule["when"]]
    assert statuses == ["Degraded", "Healthy"]
    # the engine keys a condition on its position and on a hash of `when`: they must differ
    assert len({rule["when"] for rule in rules}) == len(rules)


def _envelope_body() -> str:
    template = yaml.safe_load(_data()["template.synctrail-envelope"])
    return str(template["webhook"]["synctrail"]["body"])


def test_the_envelope_says_when_it_was_rendered_in_rfc3339() -> None:
    body = _envelope_body()
    assert (
        '"observedAt": {{toJson ((call .time.Now).UTC.Format "2006-01-02T15:04:05.000Z07:00")}},'
        in body
    )


def test_the_commit_is_looked_up_only_for_single_source_git_apps_with_a_revision() -> None:
    body = _envelope_body()
    guard = body.index("{{- with .app.spec.source }}")
    call = body.index("call $.repo.GetCommitMetadata")
    assert body.count("GetCommitMetadata") == 1
    # the call sits inside: a source, no chart, no sources, a non-empty syncResult.revision
    assert guard < body.index("if and (empty .chart) (empty $.app.spec.sources)") < call
    assert guard < body.index("{{ with .syncResult }}{{ with .revision }}") < call
    block = body[guard : body.index("end }}{{ end }}{{ end }}{{ end }}{{ end }}", call)]
    assert block.count("{{- with") + block.count("{{ with") + block.count("{{ if") == 5
    for field in ('"revision": ', '"date": ', '"author": ', '"message": '):
        assert field in block
    assert "(trunc 200 $commit.Message)" in block
    assert '$commit.Date.UTC.Format "2006-01-02T15:04:05Z07:00"' in block
