"""The record types describe exactly what the code writes: every record the worker, the Slack
connector and the policy publisher build decodes with its type and writes back the same bytes.

The worker builds its records as dicts on its hot path; these tests are what ties those dicts
to the types (and so to the generated schemas) field by field, null by null, in order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from connectors.slack.state import Source, entry
from streams.domain import records
from streams.domain.decide import decide, metric_event, recheck_policy
from streams.domain.notify import NotifyConfig, deployment_notifications, violation_notification
from streams.policy_publish import rule_record
from tests.streams.domain.test_decide import event, redelivered, resource

NOW = datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
DENY = {
    "id": "deny:nginx-1.2",
    "kind": "deny",
    "image": "docker.io/library/nginx:1.2",
    "reason": "CVE-1",
    "apps": "*",
    "projects": "*",
    "namespaces": "*",
}


def assert_typed(value: Any) -> None:
    """``value`` decodes with the type its ``schema`` names and writes back the same bytes."""
    raw = records.dumps(value)
    cls = records.RECORD_TYPES[value["schema"]]
    decoded = msgspec.json.decode(raw, type=cls)
    assert records.dumps(decoded) == raw, value["schema"]


def _decisions() -> list[Any]:
    a = event("a" * 40, {"web": "nginx:1.1", "db": "postgres:16"}, started="2026-07-06T09:00:00Z")
    failed = resource("api", "nginx:1.4", status="SyncFailed", message="admission denied")
    b = event(
        "b" * 40,
        {},
        started="2026-07-06T10:00:00Z",
        phase="Failed",
        resources=[
            resource("web", "nginx:1.2"),
            failed,
            resource("cfg", "Not A Reference::"),
            resource("migrate", "busybox:1.36", hookType="PreSync"),
        ],
    )
    a["commit"] = {"revision": "a" * 40, "date": "2026-07-06T08:00:00Z", "author": None}
    a["commit"]["message"] = None
    d = event("d" * 40, {"web": "nginx:1.3"}, started="2026-07-06T11:00:00Z")
    # health transitions of d's operation: Degraded, then Healthy (a recovery)
    degraded = redelivered(d) | {"health": "Degraded", "body_sha256": "d" * 64}
    degraded["observed_at"] = "2026-07-06T11:20:00.000Z"
    healthy = redelivered(d) | {"body_sha256": "e" * 64, "observed_at": "2026-07-06T11:50:00Z"}
    back = event("a" * 40, {"web": "nginx:1.1"}, shape="bare")  # a rollback
    state, out = None, []
    for e in (a, b, d, degraded, healthy, back, back):
        decision = decide(e, state, [DENY], now=NOW)
        out.append(decision)
        state = decision.state if decision.state is not None else state
    assert state is not None
    rule = dict(DENY, id="deny:postgres", image="docker.io/library/postgres:*")
    out.append(recheck_policy(state, [rule], now=NOW))
    return out


def test_every_record_the_worker_builds_decodes_with_its_type_to_the_same_bytes():
    config = NotifyConfig(violations_channel="#security")
    seen = set()
    for decision in _decisions():
        built = [*decision.violations, *decision.metrics]
        if decision.deployment is not None:
            built += [
                decision.deployment,
                *deployment_notifications(decision.deployment, config, NOW),
            ]
        if decision.remediation is not None:
            built.append(decision.remediation)
        for violation in decision.violations:
            if decision.deployment is None:
                built.append(violation_notification(violation, decision.state, config, NOW))
        for value in built:
            assert_typed(value)
            seen.add((value["schema"], value.get("kind")))
    assert {schema for schema, _ in seen} == {
        records.DEPLOYMENT_V1,
        records.NOTIFICATION_V1,
        records.METRIC_V1,
        records.VIOLATION_V1,
        records.REMEDIATION_V1,
        records.DORA_V1,
    }
    dora_kinds = {kind for schema, kind in seen if schema == records.DORA_V1}
    assert dora_kinds == {"health_transition", "change_failure", "lead_time", "recovery"}
    assert (records.NOTIFICATION_V1, "violation") in seen
    deployments = [d.deployment for d in _decisions() if d is not None and d.deployment]
    for field in ("images_changed", "resources_changed", "failed_resources", "violations"):
        assert any(dep[field] for dep in deployments), field  # every nested type was decoded
    assert any(dep["invalid_images"] and dep["hook_images"] for dep in deployments)
    assert any(dep["rollback"] for dep in deployments)
    assert_typed(metric_event("dead_letter", "argocd/shop", None, NOW))


def test_policy_rules_checks_and_slack_state_decode_with_their_types_to_the_same_bytes():
    rule = rule_record(DENY, NOW)
    assert_typed(rule)
    assert_typed({"schema": records.POLICY_CHECK_V1, "rule": rule})
    assert_typed(entry("intent", "k", at=1.5, channel="#a", channel_id="C1", thread_ts=None))
    assert_typed(
        entry("dead_lettered", "k", at=2.0, source=Source("t", 1, 2).as_json(), reason="x")
    )
    assert_typed(entry("thread", "thread:#a:argocd/x:2026-01-01", at=3.0, ts="1.2"))


def test_the_dead_letter_builder_writes_the_record_the_worker_and_slack_always_wrote():
    common = {
        "reason": "not JSON",
        "error_type": "JSONDecodeError",
        "topic": "synctrail.sync-events",
        "partition": 3,
        "offset": 7,
        "key": "argocd/shop",
        "failed_at": "2026-11-28T10:00:01.000Z",
    }
    text = records.dead_letter("worker", raw=b"{broken \xff", **common)
    assert records.dumps(text) == orjson.dumps(
        {
            "schema": records.DEAD_LETTER_V1,
            "component": "worker",
            "reason": "not JSON",
            "error_type": "JSONDecodeError",
            "source_topic": "synctrail.sync-events",
            "source_partition": 3,
            "source_offset": 7,
            "key": "argocd/shop",
            "original": None,
            "original_text": "{broken \ufffd",
            "failed_at": "2026-11-28T10:00:01.000Z",
        }
    )
    parsed = records.dead_letter("slack", raw=b'{"a": [1, 2.5e20, null]}', **common)
    as_json = orjson.loads(records.dumps(parsed))
    assert as_json["original"] == {"a": [1, 2.5e20, None]} and as_json["original_text"] is None
    assert records.dumps(parsed).index(b'"original":{"a":[1,2.5e+20,null]}')
    assert_typed(as_json)
    tombstone = orjson.loads(records.dumps(records.dead_letter("worker", raw=None, **common)))
    assert tombstone["original"] is None and tombstone["original_text"] is None
