"""Per-resource state (docs/derivation.md), change categories, hooks, failures."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from streams.domain.state import (
    AppliedOperation,
    apply_operation,
    classify_change,
    outcome_of_bare,
    resource_key,
    running_images,
)

SHA_A = "sha256:" + "a" * 64


def entry(
    kind: str,
    name: str,
    *,
    status: str | None = "Synced",
    message: str | None = None,
    images: list[str] | None = None,
    group: str = "apps",
    namespace: str = "ns",
    hook_type: str | None = None,
    hook_phase: str = "Running",
) -> dict[str, Any]:
    """A syncResult.resources[] entry with Argo CD's empty-field omissions."""
    e: dict[str, Any] = {
        "group": group,
        "version": "v1",
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "hookPhase": hook_phase,
    }
    if status is not None:
        e["status"] = status
    if message is not None:
        e["message"] = message
    if images is not None:
        e["images"] = images
    if hook_type is not None:
        e["hookType"] = hook_type
    return e


def apply(before: dict[str, list[str]], *entries: dict[str, Any]) -> AppliedOperation:
    return apply_operation(before, {"resources": list(entries), "revision": "x"})


WEB = "apps/Deployment/ns/web"


# -- state per resource --------------------------------------------------------------------


def test_resource_key_format_with_core_group_and_cluster_scope() -> None:
    assert resource_key(entry("Deployment", "web")) == "apps/Deployment/ns/web"
    assert resource_key(entry("Service", "web", group="")) == "/Service/ns/web"
    assert resource_key(entry("ClusterRole", "acme:x", group="rbac", namespace="")) == (
        "rbac/ClusterRole//acme:x"
    )


def test_synced_sets_normalised_sorted_deduplicated_images() -> None:
    op = apply({}, entry("Deployment", "web", images=["redis:7", "nginx", "nginx:latest"]))
    assert op.resources == {WEB: ["docker.io/library/nginx:latest", "docker.io/library/redis:7"]}


def test_synced_replaces_previous_images() -> None:
    op = apply({WEB: ["docker.io/library/nginx:1"]}, entry("Deployment", "web", images=["nginx:2"]))
    assert op.resources == {WEB: ["docker.io/library/nginx:2"]}


def test_synced_without_images_key_means_no_images_but_resource_kept() -> None:
    op = apply({}, entry("ConfigMap", "cfg", group="", message="configmap/cfg created"))
    assert op.resources == {"/ConfigMap/ns/cfg": []}


def test_synced_without_images_key_drops_images_the_resource_had() -> None:
    op = apply({WEB: ["docker.io/library/nginx:1"]}, entry("Deployment", "web"))
    assert op.resources == {WEB: []}


def test_pruned_removes_resource_even_though_it_still_lists_its_image() -> None:
    before = {
        WEB: ["docker.io/library/nginx:1"],
        "apps/StatefulSet/ns/redis": ["docker.io/library/redis:7.2.4"],
    }
    op = apply(
        before,
        entry("StatefulSet", "redis", status="Pruned", message="pruned", images=["redis:7.2.4"]),
    )
    assert op.resources == {WEB: ["docker.io/library/nginx:1"]}
    assert running_images(op.resources) == ["docker.io/library/nginx:1"]


def test_pruned_unknown_resource_is_no_error() -> None:
    op = apply({}, entry("Service", "gone", status="Pruned", message="pruned"))
    assert op.resources == {}


def test_prune_skipped_keeps_running_with_listed_live_images_and_is_reported() -> None:
    op = apply(
        {},
        entry(
            "CronJob",
            "clean",
            status="PruneSkipped",
            message="ignored (no prune)",
            images=["ghcr.io/a/b:1"],
        ),
    )
    assert op.resources == {"apps/CronJob/ns/clean": ["ghcr.io/a/b:1"]}
    assert [c["change"] for c in op.resources_changed] == ["prune_skipped"]


def test_sync_failed_leaves_resource_unchanged_and_is_reported() -> None:
    before = {WEB: ["docker.io/library/nginx:1"]}
    failed = entry("Deployment", "web", status="SyncFailed", message="boom", images=["nginx:2"])
    op = apply(before, failed)
    assert op.resources == before
    assert [c["change"] for c in op.resources_changed] == ["sync_failed"]
    assert op.failed_resources == [
        {
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
            "namespace": "ns",
            "name": "web",
            "message": "boom",
            "hook_type": None,
            "images": ["nginx:2"],
        }
    ]


def test_sync_failed_new_resource_does_not_enter_state() -> None:
    op = apply({}, entry("Deployment", "web", status="SyncFailed", images=["nginx:2"]))
    assert op.resources == {}


def test_absent_resources_are_unchanged() -> None:
    before = {WEB: ["docker.io/library/nginx:1"], "/Service/ns/web": []}
    op = apply(before, entry("ConfigMap", "cfg", group="", message="configmap/cfg created"))
    assert op.resources == {**before, "/ConfigMap/ns/cfg": []}


def test_partial_application_of_failed_operation_counts() -> None:
    # A failed operation: one Deployment applied before another failed.
    before = {WEB: ["docker.io/library/nginx:1"], "apps/Deployment/ns/api": ["ghcr.io/a/api:1"]}
    op = apply(
        before,
        entry("Deployment", "web", message="deployment.apps/web configured", images=["nginx:2"]),
        entry(
            "Deployment", "api", status="SyncFailed", message="denied", images=["ghcr.io/a/api:2"]
        ),
    )
    assert op.resources == {
        WEB: ["docker.io/library/nginx:2"],
        "apps/Deployment/ns/api": ["ghcr.io/a/api:1"],
    }
    assert (
        outcome_of_bare({"resources": [entry("Deployment", "api", status="SyncFailed")]})
        == "Failed"
    )


def test_before_state_is_not_modified() -> None:
    before = {WEB: ["docker.io/library/nginx:1"]}
    snapshot = copy.deepcopy(before)
    op = apply(before, entry("Deployment", "web", images=["nginx:2"]))
    assert before == snapshot
    op.resources[WEB].append("x")
    assert before == snapshot


def test_images_listed_twice_count_once() -> None:
    same = f"registry.local:5000/payments/api@{SHA_A}"
    op = apply({}, entry("Deployment", "api", images=[same, same]))
    assert op.resources == {"apps/Deployment/ns/api": [same]}


def test_same_resource_listed_twice_ends_as_its_last_entry_says() -> None:
    op = apply(
        {},
        entry("Deployment", "web", images=["nginx:1"]),
        entry("Deployment", "web", status="Pruned", message="pruned", images=["nginx:1"]),
    )
    assert op.resources == {}


def test_cluster_scoped_resources_have_empty_namespace_in_key() -> None:
    op = apply(
        {}, entry("ClusterRole", "acme:deployer", group="rbac.authorization.k8s.io", namespace="")
    )
    assert list(op.resources) == ["rbac.authorization.k8s.io/ClusterRole//acme:deployer"]


def test_same_name_in_two_namespaces_are_two_resources() -> None:
    op = apply(
        {},
        entry("RoleBinding", "x", namespace="team-a", message="rolebinding/x unchanged"),
        entry("RoleBinding", "x", namespace="team-b", message="rolebinding/x configured"),
    )
    assert len(op.resources) == 2
    assert op.resources_unchanged == 1
    assert [(c["namespace"], c["change"]) for c in op.resources_changed] == [
        ("team-b", "configured")
    ]


def test_entry_without_status_is_not_applied_and_reported_change_unknown() -> None:
    before = {WEB: ["docker.io/library/nginx:1"]}
    op = apply(before, entry("Deployment", "web", status=None, images=["nginx:2"]))
    assert op.resources == before
    assert [c["change"] for c in op.resources_changed] == ["change_unknown"]


# -- no resources ----------------------------------------------------------------------------


@pytest.mark.parametrize("sync_result", [None, {}, {"revision": "x"}, {"resources": []}])
def test_no_resources_leaves_state_unchanged_and_reports_nothing(sync_result: Any) -> None:
    before = {WEB: ["docker.io/library/nginx:1"]}
    op = apply_operation(before, sync_result)
    assert op == AppliedOperation(
        resources=before,
        hook_images=[],
        resources_changed=[],
        resources_unchanged=0,
        failed_resources=[],
        invalid_images=[],
    )
    assert outcome_of_bare(sync_result) == "Succeeded"


# -- hooks -------------------------------------------------------------------------------------


def test_hook_images_reported_apart_and_never_enter_state() -> None:
    op = apply(
        {},
        entry(
            "Job",
            "migrate-abc-presync-1",
            group="batch",
            hook_type="PreSync",
            hook_phase="Succeeded",
            message="Reached expected number of succeeded pods",
            images=["ghcr.io/acme/ui:v1", "ghcr.io/acme/ui:v1"],
        ),
    )
    assert op.resources == {}
    assert op.hook_images == ["ghcr.io/acme/ui:v1"]
    assert op.resources_changed == []
    assert op.resources_unchanged == 0  # hooks are not counted


def test_failed_hook_is_not_applied_but_reported_as_failed() -> None:
    op = apply(
        {WEB: ["docker.io/library/nginx:1"]},
        entry(
            "Job",
            "migrate",
            group="batch",
            status="SyncFailed",
            hook_type="PreSync",
            hook_phase="Failed",
            message="admission webhook denied",
            images=["ghcr.io/acme/ui"],
        ),
    )
    assert op.resources == {WEB: ["docker.io/library/nginx:1"]}
    assert op.hook_images == []
    assert op.resources_changed == []
    assert op.failed_resources == [
        {
            "group": "batch",
            "version": "v1",
            "kind": "Job",
            "namespace": "ns",
            "name": "migrate",
            "message": "admission webhook denied",
            "hook_type": "PreSync",
            "images": ["ghcr.io/acme/ui"],  # raw, as listed
        }
    ]


def test_hook_without_status_counts_unless_its_phase_failed() -> None:
    ran = entry(
        "Job",
        "a",
        group="batch",
        status=None,
        hook_type="PostSync",
        hook_phase="Succeeded",
        images=["x:1"],
    )
    broke = entry(
        "Job",
        "b",
        group="batch",
        status=None,
        hook_type="PostSync",
        hook_phase="Failed",
        images=["y:1"],
    )
    op = apply({}, ran, broke)
    assert op.hook_images == ["docker.io/library/x:1"]


# -- invalid images --------------------------------------------------------------------------


def test_invalid_image_is_reported_and_skipped_never_raised() -> None:
    op = apply({}, entry("Deployment", "web", images=["nginx:1", "Bad Image!", ""]))
    assert op.resources == {WEB: ["docker.io/library/nginx:1"]}
    assert [(i["resource"], i["image"]) for i in op.invalid_images] == [
        (WEB, "Bad Image!"),
        (WEB, ""),
    ]
    assert all("invalid image reference" in i["error"] for i in op.invalid_images)


def test_result_is_json_serialisable() -> None:
    op = apply(
        {}, entry("Deployment", "web", images=["nginx:1"], message="deployment.apps/web created")
    )
    for value in (op.resources, op.hook_images, op.resources_changed, op.failed_resources):
        assert orjson.loads(orjson.dumps(value)) == value


# -- change categories ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "change"),
    [
        ("Synced", "configmap/guestbook-config created", "created"),
        ("Synced", "deployment.apps/guestbook-ui configured", "configured"),
        ("Synced", "service/redis unchanged", "unchanged"),
        (
            "Synced",
            'job.batch "payments-db-seed" deleted\njob.batch/payments-db-seed replaced',
            "replaced",
        ),
        (
            "Synced",
            "clusterrole.rbac.authorization.k8s.io/x reconciled. clusterrole.rbac.authorization.k8s.io/x unchanged",
            "unchanged",
        ),
        (
            "Synced",
            "clusterrole.rbac.authorization.k8s.io/x reconciled. reconciliation required create\n"
            "\tmissing rules added:\n\t\t{Verbs:[get]}. clusterrole.rbac.authorization.k8s.io/x configured",
            "configured",
        ),
        ("Synced", "deployment.apps/payments-api serverside-applied", "change_unknown"),
        ("Synced", "Reached expected number of succeeded pods", "change_unknown"),
        (
            "Synced",
            "statefulset rolling update complete 3 pods at revision redis-7d9",
            "change_unknown",
        ),
        ("Synced", "", "change_unknown"),
        ("Synced", None, "change_unknown"),
        ("Synced", "service/x created\n\n", "created"),
        ("Pruned", "pruned", "pruned"),
        ("PruneSkipped", "ignored (no prune)", "prune_skipped"),
        ("PruneSkipped", "ignored (requires pruning)", "prune_skipped"),
        ("SyncFailed", "error validating data", "sync_failed"),
        ("SyncFailed", "deployment.apps/x configured", "sync_failed"),
        (None, "deployment.apps/x configured", "change_unknown"),
        ("Bogus", "deployment.apps/x configured", "change_unknown"),
    ],
)
def test_classify_change(status: str | None, message: str | None, change: str) -> None:
    assert classify_change(entry("Deployment", "x", status=status, message=message)) == change


def test_resources_changed_in_payload_order_with_full_identity() -> None:
    op = apply(
        {},
        entry("Service", "b", group="", message="service/b created"),
        entry("ConfigMap", "a", group="", message="configmap/a unchanged"),
        entry("Deployment", "c", message="deployment.apps/c serverside-applied"),
    )
    assert op.resources_changed == [
        {
            "group": "",
            "version": "v1",
            "kind": "Service",
            "namespace": "ns",
            "name": "b",
            "change": "created",
            "message": "service/b created",
        },
        {
            "group": "apps",
            "version": "v1",
            "kind": "Deployment",
            "namespace": "ns",
            "name": "c",
            "change": "change_unknown",
            "message": "deployment.apps/c serverside-applied",
        },
    ]
    assert op.resources_unchanged == 1


# -- running images and outcome ----------------------------------------------------------


def test_running_images_sorted_and_deduplicated_over_resources() -> None:
    assert running_images({"a": ["x:2", "y:1"], "b": ["x:2"], "c": []}) == ["x:2", "y:1"]
    assert running_images({}) == []


def test_outcome_of_bare() -> None:
    ok = {"resources": [entry("Deployment", "a"), entry("Service", "b", status="Pruned")]}
    assert outcome_of_bare(ok) == "Succeeded"
    failed = {
        "resources": [
            entry("Deployment", "a"),
            entry("Job", "h", status="SyncFailed", hook_type="PreSync"),
        ]
    }
    assert outcome_of_bare(failed) == "Failed"
