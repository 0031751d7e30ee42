"""Decisions per event (pure): duplicates, stale retries, resyncs, rollbacks, failures, policy."""

from __future__ import annotations

import copy
import hashlib
import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.domain.decide import (
    DEPLOYED,
    DUPLICATE,
    RECENT_DELIVERY_IDS,
    RESYNC,
    STALE,
    InvalidSyncEvent,
    decide,
    recheck_policy,
    validate_event,
)

NOW = datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)


def resource(name: str, image: str | None, **extra: Any) -> dict[str, Any]:
    entry = {
        "group": "apps",
        "version": "v1",
        "kind": "Deployment",
        "namespace": "shop",
        "name": name,
        "status": "Synced",
        "message": f"deployment.apps/{name} configured",
    }
    if image:
        entry["images"] = [image]
    entry.update(extra)
    return entry


_DELIVERIES = itertools.count()


def event(
    revision: str,
    images: dict[str, str],
    *,
    started: str = "2026-07-06T09:00:00Z",
    phase: str = "Succeeded",
    shape: str = "envelope",
    revisions: list[str] | None = None,
    delivery: str | None = None,
    resources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    sync_result: dict[str, Any] = {
        "resources": resources
        if resources is not None
        else [resource(name, image) for name, image in images.items()],
        "revision": revision,
    }
    if revisions:
        sync_result["revisions"] = revisions
    body = orjson.dumps({"started": started, "sync_result": sync_result, "phase": phase})
    return {
        "schema": "synctrail.sync-event/v1",
        "delivery_id": delivery or f"d{next(_DELIVERIES)}",  # one per request, like the bridge's
        "received_at": "2026-11-28T10:00:00.000Z",
        "shape": shape,
        "app": {"name": "shop", "namespace": "argocd", "project": "default", "uid": None},
        "destination": {"server": "https://k", "name": "", "namespace": "shop"},
        "operation": None
        if shape == "bare"
        else {
            "phase": phase,
            "message": "",
            "started_at": started,
            "finished_at": started,
            "initiated_by": {"automated": True},
            "retry_count": 0,
        },
        "health": "Healthy",
        "sync_status": "Synced",
        "revision": revision,
        "revisions": revisions or [],
        "sync_result": sync_result,
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


def run(*events: dict[str, Any], rules: list[dict[str, Any]] | None = None) -> list[Any]:
    state = None
    decisions = []
    for e in events:
        decision = decide(e, state, rules or [], now=NOW)
        decisions.append(decision)
        if decision.state is not None:
            state = decision.state
    return decisions


def redelivered(original: dict[str, Any]) -> dict[str, Any]:
    """The same body POSTed again: the bridge gives it a delivery id of its own."""
    return copy.deepcopy(original) | {"delivery_id": f"d{next(_DELIVERIES)}"}


def _without_ids(state: dict[str, Any] | None) -> dict[str, Any]:
    assert state is not None
    return {k: v for k, v in state.items() if k != "recent_delivery_ids"}


def test_first_operation_is_initial_with_every_image_added():
    (first,) = run(event("a" * 40, {"web": "nginx:1.27.1"}))
    assert first.outcome == DEPLOYED
    assert first.deployment["initial"] is True
    assert first.deployment["images_added"] == ["docker.io/library/nginx:1.27.1"]
    assert first.deployment["previous_revision"] is None


def test_duplicate_revision_is_not_reannounced():
    first = event("a" * 40, {"web": "nginx:1.27.1"}, delivery="one")
    again = copy.deepcopy(first) | {"delivery_id": "two"}
    decisions = run(first, again)
    assert [d.outcome for d in decisions] == [DEPLOYED, DUPLICATE]
    assert decisions[1].deployment is None
    # the state changes only by remembering the delivery id (a copy of it is a duplicate too)
    assert _without_ids(decisions[1].state) == _without_ids(decisions[0].state)
    assert decisions[1].state["recent_delivery_ids"] == ["one", "two"]
    assert [m["kind"] for m in decisions[1].metrics] == ["duplicate"]


def test_same_operation_with_an_equal_sync_result_but_other_bytes_is_a_duplicate():
    first = event("a" * 40, {"web": "nginx:1.27.1"})
    again = redelivered(first) | {"body_sha256": "f" * 64, "sync_status": "OutOfSync"}
    assert [d.outcome for d in run(first, again)] == [DEPLOYED, DUPLICATE]
    # another health is a health transition (test_decide_health.py), the same health is not
    later = redelivered(first) | {"body_sha256": "e" * 64, "observed_at": "2026-07-06T09:30:00Z"}
    assert [d.outcome for d in run(first, later)] == [DEPLOYED, DUPLICATE]


def test_bare_body_equal_to_the_last_one_is_a_duplicate():
    first = event("a" * 40, {"web": "nginx:1.27.1"}, shape="bare")
    again = redelivered(first) | {"body_sha256": "e" * 64}
    assert [d.outcome for d in run(first, again)] == [DEPLOYED, DUPLICATE]


def test_bare_body_equal_to_an_earlier_but_not_the_last_one_is_a_rollback():
    # A bare body carries no time, so it cannot be told stale: docs/derivation.md makes it a duplicate
    # only when it equals the app's last one (what the README says of replaying the examples).
    a = event("a" * 40, {"web": "nginx:1.1"}, shape="bare")
    b = event("b" * 40, {"web": "nginx:1.2"}, shape="bare")
    decisions = run(a, b, redelivered(a), redelivered(b))
    assert [d.outcome for d in decisions] == [DEPLOYED] * 4
    assert [d.deployment["rollback"] for d in decisions] == [False, False, True, True]


def test_a_delivery_appended_twice_is_a_duplicate_whatever_came_in_between():
    # a broker stall: the bridge's copy of a bare delivery lands behind the app's later ones
    a = event("a" * 40, {"web": "nginx:1.1"}, shape="bare")
    b = event("b" * 40, {"web": "nginx:1.2"}, shape="bare")
    c = event("c" * 40, {"web": "nginx:1.3"}, shape="bare")
    decisions = run(a, b, copy.deepcopy(a), copy.deepcopy(b), c)
    assert [d.outcome for d in decisions] == [DEPLOYED, DEPLOYED, DUPLICATE, DUPLICATE, DEPLOYED]
    assert not any(d.deployment and d.deployment["rollback"] for d in decisions)
    assert decisions[4].deployment["previous_revision"] == "b" * 40


def test_a_copy_of_a_delivery_first_judged_a_duplicate_is_a_duplicate_again():
    a = event("a" * 40, {"web": "nginx:1.1"}, shape="bare")
    same = redelivered(a)  # a duplicate of a by content
    b = event("b" * 40, {"web": "nginx:1.2"}, shape="bare")
    decisions = run(a, same, b, copy.deepcopy(same))
    assert [d.outcome for d in decisions] == [DEPLOYED, DUPLICATE, DEPLOYED, DUPLICATE]


def test_the_app_remembers_only_its_last_delivery_ids():
    events = [event(f"{n:040d}", {"web": f"nginx:1.{n}"}) for n in range(RECENT_DELIVERY_IDS + 5)]
    decisions = run(*events)
    remembered = decisions[-1].state["recent_delivery_ids"]
    assert remembered == [e["delivery_id"] for e in events][-RECENT_DELIVERY_IDS:]


def test_late_retry_of_an_older_operation_is_stale():
    old = event("a" * 40, {"web": "nginx:1.27.1"}, started="2026-07-06T09:00:00Z")
    new = event("b" * 40, {"web": "nginx:1.27.2"}, started="2026-07-06T10:00:00Z")
    retry = redelivered(old) | {"body_sha256": "c" * 64, "health": "Healthy"}
    retry["sync_result"]["resources"][0]["message"] = "deployment.apps/web unchanged"
    decisions = run(old, new, retry)
    assert [d.outcome for d in decisions] == [DEPLOYED, DEPLOYED, STALE]
    assert decisions[2].deployment is None
    assert _without_ids(decisions[2].state) == _without_ids(decisions[1].state)


def test_resync_of_same_revision_and_images_is_counted_not_announced():
    first = event("a" * 40, {"web": "nginx:1.27.1"}, started="2026-07-06T09:00:00Z")
    resync = event("a" * 40, {"web": "nginx:1.27.1"}, started="2026-07-06T11:00:00Z")
    decisions = run(first, resync)
    assert [d.outcome for d in decisions] == [DEPLOYED, RESYNC]
    assert decisions[1].deployment is None
    assert decisions[1].state["last_operation"]["started_at"] == "2026-07-06T11:00:00Z"


def test_multi_source_change_in_revisions_only_is_announced():
    first = event("", {"web": "app:2.7.0"}, revisions=["2.7.0", "1" * 40])
    second = event(
        "", {"web": "app:2.7.0"}, revisions=["2.7.0", "2" * 40], started="2026-07-06T10:00:00Z"
    )
    assert [d.outcome for d in run(first, second)] == [DEPLOYED, DEPLOYED]


def test_rollback_to_an_older_revision_is_a_labelled_deployment():
    a = event("a" * 40, {"web": "nginx:1.1"}, started="2026-07-06T09:00:00Z")
    b = event("b" * 40, {"web": "nginx:1.2"}, started="2026-07-06T10:00:00Z")
    back = event("a" * 40, {"web": "nginx:1.1"}, started="2026-07-06T11:00:00Z")
    decisions = run(a, b, back)
    assert [d.outcome for d in decisions] == [DEPLOYED] * 3
    rollback = decisions[2].deployment
    assert rollback["rollback"] is True and decisions[1].deployment["rollback"] is False
    assert rollback["previous_revision"] == "b" * 40
    assert rollback["images_changed"] == [
        {
            "repository": "docker.io/library/nginx",
            "from": "docker.io/library/nginx:1.2",
            "to": "docker.io/library/nginx:1.1",
        }
    ]


def test_failed_operation_is_announced_and_a_later_success_of_the_old_revision_too():
    a = event("a" * 40, {"web": "nginx:1.1"}, started="2026-07-06T09:00:00Z")
    failed = event(
        "b" * 40,
        {},
        phase="Failed",
        started="2026-07-06T10:00:00Z",
        resources=[resource("web", "nginx:1.2"), resource("api", "api:2", status="SyncFailed")],
    )
    back = event("a" * 40, {"web": "nginx:1.1"}, started="2026-07-06T11:00:00Z")
    decisions = run(a, failed, back)
    assert [d.outcome for d in decisions] == [DEPLOYED, DEPLOYED, DEPLOYED]
    assert decisions[1].deployment["operation"]["phase"] == "Failed"
    assert [r["name"] for r in decisions[1].deployment["failed_resources"]] == ["api"]
    # partial application: web's new image is live after the failure
    assert decisions[1].deployment["images"] == ["docker.io/library/nginx:1.2"]
    assert decisions[2].deployment["images_changed"][0]["to"] == "docker.io/library/nginx:1.1"


def test_denylisted_image_is_a_violation_with_a_remediation_to_the_last_good_revision():
    deny = {
        "id": "deny:nginx-1.2",
        "kind": "deny",
        "image": "docker.io/library/nginx:1.2",
        "reason": "CVE-1",
        "apps": "*",
        "projects": "*",
        "namespaces": "*",
    }
    a = event("a" * 40, {"web": "nginx:1.1"}, started="2026-07-06T09:00:00Z")
    b = event("b" * 40, {"web": "nginx:1.2"}, started="2026-07-06T10:00:00Z")
    decisions = run(a, b, rules=[deny])
    assert decisions[1].deployment["violations"] == [
        {
            "rule": "denylist",
            "rule_id": "deny:nginx-1.2",
            "image": "docker.io/library/nginx:1.2",
            "reason": "CVE-1",
        }
    ]
    assert [v["detected"] for v in decisions[1].violations] == ["deploy"]
    assert decisions[1].remediation["known_good_revision"] == "a" * 40
    assert decisions[1].remediation["bad_images"] == ["docker.io/library/nginx:1.2"]


def test_retroactive_rule_flags_once_and_not_again():
    state = run(event("a" * 40, {"web": "nginx:1.1"}))[0].state
    rule = {
        "id": "deny:nginx",
        "kind": "deny",
        "image": "docker.io/library/nginx:*",
        "reason": "all nginx",
        "apps": "*",
        "projects": "*",
        "namespaces": "*",
    }
    flagged = recheck_policy(state, [rule], now=NOW)
    assert flagged is not None
    assert [v["detected"] for v in flagged.violations] == ["retroactive"]
    assert flagged.remediation is not None and flagged.remediation["known_good_revision"] is None
    assert recheck_policy(flagged.state, [rule], now=NOW) is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.update(schema="other/v1"), "schema"),
        (lambda e: e.update(app={"name": ""}), "app"),
        (lambda e: e["sync_result"].update(resources={"a": 1}), "resources"),
        (lambda e: e.update(revisions="x"), "revisions"),
        (lambda e: e.update(shape="weird"), "shape"),
    ],
)
def test_invalid_events_are_rejected_naming_the_field(mutate, field):
    bad = event("a" * 40, {"web": "nginx:1"})
    mutate(bad)
    with pytest.raises(InvalidSyncEvent, match=field):
        validate_event(bad)


def test_retroactive_deny_rule_respects_its_scope():
    state = run(event("a" * 40, {"web": "nginx:1.1"}))[0].state
    other_project = {
        "id": "deny:nginx|projects=payments",
        "kind": "deny",
        "image": "docker.io/library/nginx:*",
        "reason": "payments only",
        "apps": "*",
        "projects": "payments",
        "namespaces": "*",
    }
    assert recheck_policy(state, [other_project], now=NOW) is None


def test_retroactive_allow_rule_flags_images_outside_every_applicable_allow_rule():
    state = run(event("a" * 40, {"web": "nginx:1.1", "api": "ghcr.io/acme/api:2"}))[0].state
    allow_ghcr = {
        "id": "allow:ghcr",
        "kind": "allow",
        "patterns": ["ghcr.io/acme/*"],
        "reason": "only our registry",
        "apps": "*",
        "projects": "*",
        "namespaces": "*",
    }
    flagged = recheck_policy(state, [allow_ghcr], now=NOW)
    assert flagged is not None
    assert [(v["rule"], v["image"]) for v in flagged.violations] == [
        ("unexpected", "docker.io/library/nginx:1.1")
    ]
    allow_hub = {**allow_ghcr, "id": "allow:hub", "patterns": ["docker.io"]}
    assert recheck_policy(state, [allow_ghcr, allow_hub], now=NOW) is None


def test_a_violation_is_reported_once_while_the_image_keeps_running():
    allow = {
        "id": "allow:projects=default|ghcr.io",  # rule ids may contain any character
        "kind": "allow",
        "patterns": ["ghcr.io"],
        "reason": "ghcr only",
        "apps": "*",
        "projects": "*",
        "namespaces": "*",
    }
    a = event(
        "a" * 40, {"web": "nginx:1.1", "api": "ghcr.io/acme/api:1"}, started="2026-07-06T09:00:00Z"
    )
    b = event(
        "b" * 40, {"web": "nginx:1.1", "api": "ghcr.io/acme/api:2"}, started="2026-07-06T10:00:00Z"
    )
    gone = event(
        "c" * 40,
        {},
        started="2026-07-06T11:00:00Z",
        resources=[
            resource("api", "ghcr.io/acme/api:3"),
            resource("web", "nginx:1.1", status="Pruned"),
        ],
    )
    back = event(
        "d" * 40, {"web": "nginx:1.1", "api": "ghcr.io/acme/api:3"}, started="2026-07-06T12:00:00Z"
    )
    decisions = run(a, b, gone, back, rules=[allow])
    assert [len(d.violations) for d in decisions] == [1, 0, 0, 1]
    assert [len(d.deployment["violations"]) for d in decisions] == [1, 1, 0, 1]
