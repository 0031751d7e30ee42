"""The fixtures' oracle: fold every valid payload through state + diff, compare to expected.json.

Duplicate deliveries (``duplicateOf`` set) are skipped here: recognising them is the agent's
job; this checks what the pure functions derive from each real operation, in delivery order.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.domain.diff import diff_images
from streams.domain.state import AppliedOperation, apply_operation, outcome_of_bare, running_images
from tests.support import SHARED_FIXTURES, load_expected

# expected.json spells the categories in camelCase.
CATEGORY = {
    "prune_skipped": "pruneSkipped",
    "sync_failed": "syncFailed",
    "change_unknown": "changeUnknown",
}


def _oracle_entries() -> list[dict[str, Any]]:
    return [e for e in load_expected() if e.get("valid") and not e.get("duplicateOf")]


def _label(resource: dict[str, Any]) -> str:
    """expected.json's ``Kind/namespace/name`` (``Kind/name`` when cluster-scoped)."""
    parts = [resource["kind"], resource["namespace"], resource["name"]]
    return "/".join(p for i, p in enumerate(parts) if i != 1 or p)


def _resource_changes(applied: AppliedOperation) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for resource in applied.resources_changed:
        category = CATEGORY.get(resource["change"], resource["change"])
        changes.setdefault(category, []).append(_label(resource))
    changes["unchanged"] = applied.resources_unchanged
    return changes


def _fold() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Replay the fixtures per app in delivery order; pair each expectation with the result."""
    states: dict[str, dict[str, list[str]]] = {}
    results = []
    for expected in _oracle_entries():
        body = orjson.loads((SHARED_FIXTURES / expected["file"]).read_bytes())
        sync_result = body["syncResult"] if expected["shape"] == "envelope" else body
        before = states.get(expected["app"], {})
        applied = apply_operation(before, sync_result)
        images = running_images(applied.resources)
        diff = diff_images(running_images(before), images)
        phase = (
            body["operation"]["phase"]
            if expected["shape"] == "envelope"
            else outcome_of_bare(sync_result)
        )
        results.append(
            (
                expected,
                {
                    "operationPhase": phase,
                    "runningImages": images,
                    "imagesAdded": diff.added,
                    "imagesRemoved": diff.removed,
                    "imagesChanged": diff.changed,
                    "hookImages": applied.hook_images,
                    "resourceChanges": _resource_changes(applied),
                    "failedResources": [
                        {"resource": _label(f), "hookType": f["hook_type"], "images": f["images"]}
                        for f in applied.failed_resources
                    ],
                    "invalidImages": applied.invalid_images,
                },
            )
        )
        states[expected["app"]] = applied.resources
    return results


RESULTS = _fold() if (SHARED_FIXTURES / "expected.json").exists() else []


def test_fixtures_are_present() -> None:
    assert RESULTS, f"no fixtures under {SHARED_FIXTURES}"
    assert len(RESULTS) == 13  # 14 valid files, one of them a duplicate delivery


@pytest.mark.parametrize(("expected", "derived"), RESULTS, ids=[e["file"] for e, _ in RESULTS])
def test_fixture_matches_oracle(expected: dict[str, Any], derived: dict[str, Any]) -> None:
    for field in (
        "operationPhase",
        "runningImages",
        "imagesAdded",
        "imagesRemoved",
        "imagesChanged",
        "hookImages",
        "resourceChanges",
    ):
        assert derived[field] == expected[field], field
    assert derived["failedResources"] == expected.get("failedResources", [])
    assert derived["invalidImages"] == []


def test_first_payload_of_every_app_adds_every_running_image() -> None:
    seen: set[str] = set()
    for expected, derived in RESULTS:
        if expected["app"] not in seen:
            assert expected["previousFile"] is None
            assert derived["imagesAdded"] == derived["runningImages"]
        seen.add(expected["app"])


# -- the quirks the fixtures README names, on the real payloads --------------------------------


def _sync_result(name: str) -> dict[str, Any]:
    body = orjson.loads((SHARED_FIXTURES / name).read_bytes())
    return body["syncResult"] if "schemaVersion" in body else body


def _derived(name: str) -> dict[str, Any]:
    return next(d for e, d in RESULTS if e["file"] == name)


def test_pruned_statefulset_still_lists_redis_but_redis_is_removed() -> None:
    pruned = [
        r
        for r in _sync_result("10-guestbook-rev-d.json")["resources"]
        if r.get("status") == "Pruned"
    ]
    assert any("redis:7.2.4" in r.get("images", []) for r in pruned)
    derived = _derived("10-guestbook-rev-d.json")
    assert derived["imagesRemoved"] == ["docker.io/library/redis:7.2.4"]
    assert "docker.io/library/redis:7.2.4" not in derived["runningImages"]


def test_prune_skipped_cronjob_keeps_its_image_running() -> None:
    derived = _derived("10-guestbook-rev-d.json")
    assert derived["resourceChanges"]["pruneSkipped"] == ["CronJob/guestbook/guestbook-cleanup"]
    assert "ghcr.io/acme/guestbook-ui:v1.5.0" in derived["runningImages"]


def test_failed_hook_with_untagged_image_is_not_applied() -> None:
    derived = _derived("13-guestbook-rev-e-failed.json")
    assert derived["operationPhase"] == "Failed"
    assert derived["hookImages"] == []
    assert "ghcr.io/acme/guestbook-ui:latest" not in derived["runningImages"]
    assert derived["runningImages"] == _derived("10-guestbook-rev-d.json")["runningImages"]


def test_digest_image_listed_twice_and_registry_with_port_count_once() -> None:
    deployment = next(
        r
        for r in _sync_result("02-payments-api-rev-a.json")["resources"]
        if r["kind"] == "Deployment" and r["name"] == "payments-api"
    )
    assert len(deployment["images"]) == 2 and len(set(deployment["images"])) == 1
    running = _derived("02-payments-api-rev-a.json")["runningImages"]
    assert [i for i in running if i.startswith("registry.local:5000/payments/api@")] == [
        deployment["images"][0]
    ]


def test_tag_plus_digest_change_is_one_change_and_hook_only_image_never_runs() -> None:
    derived = _derived("09-ingress-nginx-chart-4.10.1.json")
    assert [c["repository"] for c in derived["imagesChanged"]] == [
        "registry.k8s.io/ingress-nginx/controller"
    ]
    assert not any("kube-webhook-certgen" in i for i in derived["runningImages"])


def test_no_images_anywhere_and_cluster_scoped_resources() -> None:
    resources = _sync_result("12-cluster-rbac.json")["resources"]
    assert not any("images" in r for r in resources)
    assert any(r["namespace"] == "" for r in resources)
    derived = _derived("12-cluster-rbac.json")
    assert derived["runningImages"] == []
    assert "ClusterRole/acme:deployer" in derived["resourceChanges"]["configured"]
