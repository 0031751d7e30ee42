"""Rendering of deployment and violation messages: limits, truncation, Unicode, links, goldens.

Deployment records are built from the shared fixtures and their oracle (``expected.json``) by
``fixture_deployments`` below, so rendering is tested on every real deploy shape without
depending on the worker. Golden files live in ``tests/streams/golden``; regenerate them after
an intended change with ``SYNCTRAIL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/streams/domain/test_render.py``
and review the diff.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain import render
from streams.domain.render import render_deployment, render_violation
from tests.support import SHARED_FIXTURES, load_expected

GOLDEN = Path(__file__).parent / "golden"
ARGOCD = "https://argocd.acme.example"

_CHANGE = {
    "created": "created",
    "configured": "configured",
    "replaced": "replaced",
    "pruned": "pruned",
    "pruneSkipped": "prune_skipped",
    "syncFailed": "sync_failed",
    "changeUnknown": "change_unknown",
}


def _split(ref: str) -> tuple[str, str, str]:
    kind, _, rest = ref.partition("/")
    namespace, _, name = rest.rpartition("/")
    return kind, namespace, name


def _body_resource(body: dict[str, Any], kind: str, namespace: str, name: str) -> dict[str, Any]:
    sync = body.get("syncResult", body) or {}
    for r in sync.get("resources") or []:
        if (r.get("kind"), r.get("namespace"), r.get("name")) == (kind, namespace, name):
            return r
    return {}


def deployment_from_fixture(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``synctrail.deployment/v1`` record for one fixture, from the body and the oracle."""
    body = orjson.loads((SHARED_FIXTURES / entry["file"]).read_bytes())
    sync = body.get("syncResult", body) or {}
    app_ns, _, app = entry["app"].partition("/")
    envelope = entry["shape"] == "envelope"
    op = body.get("operation") or {}
    changed = []
    for change, refs in entry["resourceChanges"].items():
        if change == "unchanged":
            continue
        for ref in refs:
            kind, namespace, name = _split(ref)
            r = _body_resource(body, kind, namespace, name)
            changed.append(
                {
                    "group": r.get("group", ""),
                    "version": r.get("version", "v1"),
                    "kind": kind,
                    "namespace": namespace,
                    "name": name,
                    "change": _CHANGE[change],
                    "message": r.get("message"),
                }
            )
    failed = []
    for f in entry.get("failedResources") or []:
        kind, namespace, name = _split(f["resource"])
        r = _body_resource(body, kind, namespace, name)
        failed.append(
            {
                "group": r.get("group", ""),
                "version": r.get("version", "v1"),
                "kind": kind,
                "namespace": namespace,
                "name": name,
                "message": r.get("message"),
                "hook_type": f.get("hookType"),
                "images": f.get("images") or [],
            }
        )
    previous = None
    if entry["previousFile"]:
        prev = next(e for e in load_expected() if e["file"] == entry["previousFile"])
        previous = prev
    return {
        "schema": "synctrail.deployment/v1",
        "app": app,
        "app_namespace": app_ns,
        "project": (body.get("app") or {}).get("project") if envelope else None,
        "destination": body.get("destination") if envelope else None,
        "revision": entry["revision"],
        "revisions": entry["revisions"],
        "previous_revision": previous["revision"] if previous else None,
        "previous_revisions": previous["revisions"] if previous else [],
        "operation": {
            "phase": entry["operationPhase"],
            "started_at": op.get("startedAt"),
            "finished_at": op.get("finishedAt"),
            "initiated_by": op.get("initiatedBy") or {},
            "retry_count": op.get("retryCount", 0),
            "message": op.get("message"),
        },
        "health": body.get("health"),
        "initial": entry["previousFile"] is None,
        "rollback": False,
        "fingerprint": "sha256:" + "0" * 64,
        "images": entry["runningImages"],
        "images_added": entry["imagesAdded"],
        "images_removed": entry["imagesRemoved"],
        "images_changed": entry["imagesChanged"],
        "hook_images": entry["hookImages"],
        "resources_changed": changed,
        "resources_unchanged": entry["resourceChanges"].get("unchanged", 0),
        "failed_resources": failed,
        "violations": [],
        "source": sync.get("source"),
        "sources": sync.get("sources") or [],
        "received_at": "2026-07-06T09:13:42.000Z",
        "delivery_id": f"d-{entry['file'][:2]}",
    }


def fixture_deployments() -> dict[str, dict[str, Any]]:
    """Every announced fixture deploy (duplicates left out), by file name."""
    return {
        e["file"]: deployment_from_fixture(e)
        for e in load_expected()
        if e.get("valid") and not e.get("duplicateOf")
    }


def violation_deployment() -> dict[str, Any]:
    """Fixture 07 (envoy sidecar added) with a denylist hit on the new image."""
    d = copy.deepcopy(fixture_deployments()["07-guestbook-rev-c.json"])
    d["violations"] = [
        {
            "rule": "denylist",
            "rule_id": "deny-envoy-1.30.1",
            "image": "docker.io/envoyproxy/envoy:v1.30.1",
            "reason": "CVE-2024-34362: use-after-free in HTTP/3 <upgrade & retry>",
        }
    ]
    return d


def many_resources_deployment(count: int = 300) -> dict[str, Any]:
    """Fixture 14 with every one of ``count`` resources changed: the list must truncate."""
    d = copy.deepcopy(fixture_deployments()["14-tenant-configs-300-resources.json"])
    d["resources_changed"] = [
        {
            "group": "",
            "version": "v1",
            "kind": "ConfigMap",
            "namespace": f"tenant-{i:03d}",
            "name": f"tenant-{i:03d}-settings-with-a-rather-long-name",
            "change": "configured",
            "message": f"configmap/tenant-{i:03d}-settings configured",
        }
        for i in range(count)
    ]
    d["resources_unchanged"] = 1
    return d


def all_texts(blocks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every text object in ``blocks`` as (block type, text)."""
    out = []
    for b in blocks:
        if "text" in b:
            out.append((b["type"], b["text"]["text"]))
        for f in b.get("fields", []):
            out.append(("field", f["text"]))
        for e in b.get("elements", []):
            if "text" in e:
                out.append(("context", e["text"]))
    return out


def assert_within_limits(text: str, blocks: list[dict[str, Any]]) -> None:
    """Slack's Block Kit limits, and a non-empty fallback."""
    assert text.strip()
    assert render.slack_len(text) <= render.MAX_FALLBACK
    assert 1 <= len(blocks) <= render.MAX_BLOCKS
    for kind, t in all_texts(blocks):
        assert t, kind
        limit = {"header": render.MAX_HEADER, "field": render.MAX_FIELD}.get(kind, render.MAX_TEXT)
        assert render.slack_len(t) <= limit, (kind, render.slack_len(t))
    for b in blocks:
        assert len(b.get("fields", [])) <= render.MAX_FIELDS


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("name", sorted(fixture_deployments()))
def test_every_fixture_deploy_renders_within_slack_limits(name: str) -> None:
    deployment = fixture_deployments()[name]
    text, blocks = render_deployment(deployment, argocd_url=ARGOCD)
    assert_within_limits(text, blocks)
    assert deployment["app"] in text
    assert render.revision_label(deployment) in text
    assert blocks[0]["type"] == "header"
    assert deployment["app"] in blocks[0]["text"]["text"]


def test_fallback_text_names_app_and_short_revision() -> None:
    d = fixture_deployments()["03-guestbook-rev-b.json"]
    text, _ = render_deployment(d)
    assert text == f"guestbook deployed {d['revision'][:7]} to guestbook (1 image change)"


def test_multi_source_revision_shows_chart_version_and_short_sha() -> None:
    d = fixture_deployments()["08-storefront-rev-a.json"]
    assert render.revision_label(d) == "2.7.0 + d6dd5b1"
    text, blocks = render_deployment(d)
    assert "2.7.0 + d6dd5b1" in text
    fields = " ".join(f["text"] for b in blocks for f in b.get("fields", []))
    assert "chart `storefront` `2.7.0`" in fields
    assert (
        "<https://github.com/acme/storefront-config/commit/d6dd5b15529078046c2baddebb0393e05ac115ae|d6dd5b1>"
        in fields
    )


def test_helm_chart_version_is_a_version_not_a_link() -> None:
    d = fixture_deployments()["09-ingress-nginx-chart-4.10.1.json"]
    text, blocks = render_deployment(d)
    assert "4.10.1" in text
    revision_field = next(
        f["text"] for f in blocks[1]["fields"] if f["text"].startswith("*Revision*")
    )
    assert "`4.10.1`" in revision_field and "<http" not in revision_field


def test_300_changed_resources_truncate_with_and_n_more() -> None:
    text, blocks = render_deployment(many_resources_deployment(300), argocd_url=ARGOCD)
    assert_within_limits(text, blocks)
    resources = next(t for _, t in all_texts(blocks) if t.startswith("*Changed resources"))
    assert resources.startswith("*Changed resources (300)* · 1 unchanged")
    shown = resources.count("\n• ")
    assert shown == render.MAX_RESOURCE_LINES
    assert resources.endswith(f"\n… and {300 - shown} more")


def test_list_truncates_by_characters_when_lines_are_long() -> None:
    lines = [render.code("x" * 350) for _ in range(40)]
    text = render.bullet_list("*Images*", lines)
    assert render.slack_len(text) <= render.MAX_TEXT
    shown = text.count("\n• ")
    assert 0 < shown < 40
    assert text.endswith(f"… and {40 - shown} more")


def test_fifty_block_limit_keeps_a_trailer() -> None:
    blocks = [render.divider() for _ in range(70)]
    limited = render.limit_blocks(blocks)
    assert len(limited) == render.MAX_BLOCKS
    assert limited[-1]["elements"][0]["text"] == "… and 21 more blocks"


# ----------------------------------------------------------------------------- content


def test_violations_come_first_and_stand_out() -> None:
    text, blocks = render_deployment(violation_deployment(), argocd_url=ARGOCD)
    assert text.startswith("🚨 1 policy violation: guestbook")
    assert blocks[0]["text"]["text"].startswith("🚨 guestbook")
    first = blocks[1]["text"]["text"]
    assert first.startswith(":rotating_light: *Policy violations (1)*")
    assert "`docker.io/envoyproxy/envoy:v1.30.1`" in first
    assert "denylist rule `deny-envoy-1.30.1`" in first
    # the reason's < > & are escaped for mrkdwn
    assert "&lt;upgrade &amp; retry&gt;" in first


def test_failed_operation_is_marked_with_its_failed_resources() -> None:
    d = fixture_deployments()["13-guestbook-rev-e-failed.json"]
    text, blocks = render_deployment(d)
    assert text.startswith("guestbook: sync Failed at e147fe5")
    assert "FAILED" in blocks[0]["text"]["text"]
    failure = blocks[1]["text"]["text"]
    assert failure.startswith(":x: *Sync Failed* after 5 retries")
    failed = blocks[2]["text"]["text"]
    assert failed.startswith("*Failed resources (1)*")
    assert "`guestbook/guestbook-db-migrate-e147fe5-presync-1783773910`" in failed
    assert "(PreSync hook)" in failed and "not applied: `ghcr.io/acme/guestbook-ui`" in failed


def test_image_changes_then_added_and_removed() -> None:
    d = fixture_deployments()["06-payments-api-rev-b.json"]
    _, blocks = render_deployment(d)
    texts = [t for _, t in all_texts(blocks)]
    changes = next(t for t in texts if t.startswith("*Image changes*"))
    assert "• `registry.local:5000/payments/worker`: `:2.3.1` → `:2.4.0`" in changes
    assert "`@sha256:fa5639883dc3…` → `@sha256:5a9183b217ea…`" in changes
    removed = render_deployment(fixture_deployments()["10-guestbook-rev-d.json"])[1]
    assert any(
        t.startswith("*Removed*\n• `docker.io/library/redis:7.2.4`") for _, t in all_texts(removed)
    )
    added = render_deployment(fixture_deployments()["07-guestbook-rev-c.json"])[1]
    assert any(
        t.startswith("*Added*\n• `docker.io/envoyproxy/envoy:v1.30.1`") for _, t in all_texts(added)
    )


def test_running_images_are_listed_once_each() -> None:
    d = fixture_deployments()["02-payments-api-rev-a.json"]
    d["images"] = [*d["images"], d["images"][0]]
    _, blocks = render_deployment(d)
    running = next(t for _, t in all_texts(blocks) if t.startswith("*Running images"))
    assert running.startswith("*Running images (2)* — first deploy: all new")
    assert running.count("registry.local:5000/payments/api@sha256:fa5639883dc3") == 1


def test_server_side_apply_says_changes_are_inferred_from_images() -> None:
    _, blocks = render_deployment(fixture_deployments()["06-payments-api-rev-b.json"])
    notes = [t for k, t in all_texts(blocks) if k == "context"]
    assert any("Server-side apply does not say whether 6 objects changed" in n for n in notes)
    resources = next(t for _, t in all_texts(blocks) if t.startswith("*Changed resources"))
    assert "Job `payments/payments-db-seed` — replaced" in resources
    assert "applied (server-side; change unknown)" in resources


def test_initial_and_rollback_are_labelled() -> None:
    first = render_deployment(fixture_deployments()["01-guestbook-rev-a.json"])
    assert "first deploy" in first[1][0]["text"]["text"] and "first deploy" in first[0]
    d = fixture_deployments()["03-guestbook-rev-b.json"]
    d["rollback"] = True
    text, blocks = render_deployment(d)
    assert text.startswith("guestbook rolled back to ")
    assert blocks[0]["text"]["text"].startswith("⏪ guestbook →")
    assert "rollback" in blocks[0]["text"]["text"]


def test_argocd_link_and_commit_link() -> None:
    _, blocks = render_deployment(
        fixture_deployments()["03-guestbook-rev-b.json"], argocd_url=ARGOCD + "/"
    )
    fields = {f["text"].split("\n", 1)[0]: f["text"] for f in blocks[1]["fields"]}
    assert f"<{ARGOCD}/applications/argocd/guestbook|argocd/guestbook>" in fields["*App*"]
    assert "<https://github.com/acme/gitops-guestbook/commit/" in fields["*Revision*"]
    assert "in acme/gitops-guestbook" in fields["*Revision*"]
    _, plain = render_deployment(fixture_deployments()["03-guestbook-rev-b.json"])
    assert "applications/" not in orjson.dumps(plain).decode()


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("https://github.com/acme/app.git", "https://github.com/acme/app/commit/{sha}"),
        ("git@github.com:acme/app.git", "https://github.com/acme/app/commit/{sha}"),
        ("ssh://git@github.com/acme/app", "https://github.com/acme/app/commit/{sha}"),
        ("https://gitlab.com/group/sub/app.git", "https://gitlab.com/group/sub/app/-/commit/{sha}"),
        (
            "https://gitlab.acme.example/team/app",
            "https://gitlab.acme.example/team/app/-/commit/{sha}",
        ),
        ("https://bitbucket.org/ws/app.git", "https://bitbucket.org/ws/app/commits/{sha}"),
        ("https://dev.azure.com/org/proj/_git/app", None),
        ("https://charts.acme.example/stable", None),
        ("not a url", None),
    ],
)
def test_commit_links_for_known_forges(repo: str, expected: str | None) -> None:
    sha = "c80b44881ea7c96972cd71ade0c9f3e83aaa0045"
    assert render.commit_url(repo, sha) == (expected.format(sha=sha) if expected else None)
    assert render.commit_url(repo, "4.10.1") is None


def test_cluster_scoped_and_non_ascii_values_render() -> None:
    d = fixture_deployments()["07-guestbook-rev-c.json"]
    _, blocks = render_deployment(d)
    fields = " ".join(f["text"] for f in blocks[1]["fields"])
    assert "zoë.müller@acme.example" in fields
    rbac = render_deployment(fixture_deployments()["12-cluster-rbac.json"])[1]
    resources = next(t for _, t in all_texts(rbac) if t.startswith("*Changed resources"))
    assert "ClusterRole `acme:deployer` — configured" in resources


def test_unparseable_image_references_are_mentioned() -> None:
    d = fixture_deployments()["03-guestbook-rev-b.json"]
    d["invalid_images"] = [
        {"resource": "Deployment/guestbook/web", "image": "Bad Image!", "error": "invalid"}
    ] * 7
    text, blocks = render_deployment(d)
    assert_within_limits(text, blocks)
    note = next(t for k, t in all_texts(blocks) if "do not parse" in t)
    assert "`Bad Image!` in `Deployment/guestbook/web`" in note
    assert note.endswith("… and 2 more")


def test_render_violation_names_app_image_and_rule() -> None:
    violation = {
        "schema": "synctrail.violation/v1",
        "app": "payments-api",
        "app_namespace": "argocd",
        "project": "payments",
        "image": "registry.local:5000/payments/worker:2.4.0",
        "rule": "denylist",
        "rule_id": "deny-worker-2.4",
        "reason": "leaks DB credentials in logs",
        "detected": "retroactive",
        "revision": "5484693a79c2a52b24acd8a48357fdf89d2d2141",
        "revisions": [],
        "delivery_id": None,
        "detected_at": "2026-07-12T08:00:00.000Z",
    }
    text, blocks = render_violation(violation, argocd_url=ARGOCD)
    assert_within_limits(text, blocks)
    assert "payments-api" in text and "5484693" in text and "worker:2.4.0" in text
    assert blocks[1]["text"]["text"].startswith(":rotating_light:")
    check_golden("violation-retroactive", text, blocks)


# ----------------------------------------------------------------------------- Unicode


def test_cut_never_splits_a_grapheme() -> None:
    family = "👨\u200d👩\u200d👧"
    flags = "🇫🇷🇩🇪"
    accent = "e\u0301"
    for s in (family * 3, flags * 3, accent * 5, "a👍🏽b" * 4):
        for limit in range(1, render.slack_len(s)):
            out = render.fit(s, limit, mrkdwn=False)
            assert render.slack_len(out) <= limit
            head = out.removesuffix("…")
            assert s.startswith(head)
            rest = s[len(head) :]
            assert not rest or render.safe_cut(s, len(head)) == len(head)
            assert not rest or not (render._is_extender(rest[0]) or (head and head[-1] == "\u200d"))


def test_escaping_happens_before_cutting() -> None:
    out = render.fit("&" * 100, 20)
    assert out.endswith("…")
    assert out.removesuffix("…") == "&amp;" * 3
    assert render.slack_len(out) <= 20


@settings(max_examples=150, deadline=None)
@given(
    app=st.text(min_size=1, max_size=300),
    reason=st.text(max_size=5000),
    images=st.lists(st.text(min_size=1, max_size=400), max_size=60),
)
def test_any_text_renders_within_limits(app: str, reason: str, images: list[str]) -> None:
    d = copy.deepcopy(fixture_deployments()["03-guestbook-rev-b.json"])
    d["app"] = app
    d["images"] = images
    d["images_added"] = images
    d["violations"] = [
        {"rule": "denylist", "rule_id": app, "image": i, "reason": reason} for i in images
    ]
    d["operation"]["phase"] = "Failed"
    d["operation"]["message"] = reason
    text, blocks = render_deployment(d, argocd_url=ARGOCD)
    assert_within_limits(text, blocks)
    for kind, t in all_texts(blocks):
        if kind == "header":  # plain_text: shown literally, never escaped
            continue
        # every & starts an entity: nothing unescaped leaks into mrkdwn
        assert "&" not in t.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")


# ----------------------------------------------------------------------------- goldens


def check_golden(name: str, text: str, blocks: list[dict[str, Any]]) -> None:
    """Compare with ``golden/<name>.json``; rewrite it when SYNCTRAIL_UPDATE_GOLDEN=1."""
    path = GOLDEN / f"{name}.json"
    actual = orjson.dumps({"text": text, "blocks": blocks}, option=orjson.OPT_INDENT_2) + b"\n"
    if os.environ.get("SYNCTRAIL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(actual)
    assert path.exists(), f"{path.name} missing; create it with SYNCTRAIL_UPDATE_GOLDEN=1"
    assert orjson.loads(path.read_bytes()) == {"text": text, "blocks": blocks}, (
        f"{path.name} differs; if intended, regenerate with SYNCTRAIL_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize(
    ("golden", "build"),
    [
        ("first-deploy", lambda: fixture_deployments()["01-guestbook-rev-a.json"]),
        ("tag-change", lambda: fixture_deployments()["03-guestbook-rev-b.json"]),
        ("server-side-apply", lambda: fixture_deployments()["06-payments-api-rev-b.json"]),
        ("multi-source-helm", lambda: fixture_deployments()["11-storefront-rev-b.json"]),
        ("failed-operation", lambda: fixture_deployments()["13-guestbook-rev-e-failed.json"]),
        (
            "tenant-configs-300-resources",
            lambda: fixture_deployments()["14-tenant-configs-300-resources.json"],
        ),
        ("300-changed-resources", many_resources_deployment),
        ("violation", violation_deployment),
    ],
)
def test_golden_messages(golden: str, build: Any) -> None:
    text, blocks = render_deployment(build(), argocd_url=ARGOCD)
    assert_within_limits(text, blocks)
    check_golden(golden, text, blocks)
