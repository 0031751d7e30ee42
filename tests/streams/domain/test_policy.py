"""Policy rules: loading YAML, validation, deny and allow matching, retroactive matching."""

from __future__ import annotations

from typing import Any

import pytest

from streams.domain.policy import (
    PolicyError,
    find_violations,
    images_matching_rule,
    load_policy_file,
    rule_applies,
    rule_id_for,
    validate_rule,
)

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64

POLICY = f"""
deny:
  - image: nginx:1.25.0                         # exact, normalised
    reason: CVE-2024-1234
  - image: "ghcr.io/acme/*:*-debug"             # repository glob + tag glob
    reason: debug builds never ship
  - image: "{SHA_A}"                            # bare digest
    reason: compromised build
  - image: "registry.local:5000/payments/api@{SHA_B}"
    reason: leaked key
allow:
  - projects: payments*
    registries: [registry.local:5000]
    repositories: ["ghcr.io/acme/*"]
"""

PAYMENTS = {
    "app": "payments-api",
    "app_namespace": "argocd",
    "project": "payments",
    "namespace": "payments",
}
OTHER = {
    "app": "guestbook",
    "app_namespace": "argocd",
    "project": "default",
    "namespace": "guestbook",
}


def violations(
    images: list[str], rules: list[dict[str, Any]], scope: dict[str, Any]
) -> list[tuple[str, str, str]]:
    return [(v["rule"], v["rule_id"], v["image"]) for v in find_violations(images, rules, **scope)]


# -- loading -----------------------------------------------------------------------------------


def test_load_policy_file_normalises_and_derives_ids() -> None:
    rules = load_policy_file(POLICY)
    assert [(r["kind"], r["id"]) for r in rules] == [
        ("deny", "deny:docker.io/library/nginx:1.25.0"),
        ("deny", "deny:ghcr.io/acme/*:*-debug"),
        ("deny", f"deny:{SHA_A}"),
        ("deny", f"deny:registry.local:5000/payments/api@{SHA_B}"),
        ("allow", "allow:projects=payments*|ghcr.io/acme/*,registry.local:5000"),
    ]
    allow = rules[-1]
    assert allow["patterns"] == ["ghcr.io/acme/*", "registry.local:5000"]
    assert (allow["apps"], allow["projects"], allow["namespaces"]) == ("*", "payments*", "*")
    assert rules[0]["reason"] == "CVE-2024-1234"
    assert rules[0]["patterns"] is None and allow["image"] is None


def test_loading_is_deterministic() -> None:
    assert load_policy_file(POLICY) == load_policy_file(POLICY)


def test_explicit_id_is_kept() -> None:
    rules = load_policy_file("deny:\n  - id: cve-1\n    image: nginx:1\n    reason: r\n")
    assert rules[0]["id"] == "cve-1"


@pytest.mark.parametrize("text", ["", "# nothing\n", "deny: []\nallow:\n"])
def test_empty_policy_files_give_no_rules(text: str) -> None:
    assert load_policy_file(text) == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("deny: [{image: NGINX, reason: r}]", "deny[0].image"),
        ("deny: [{image: nginx}]", "deny[0].reason"),
        ("deny: [{reason: r}]", "deny[0].image"),
        ("deny: [{image: nginx, reason: r}, {image: 'x:bad tag', reason: r}]", "deny[1].image"),
        ("deny: [{image: [nginx], reason: r}]", "deny[0].image"),
        (f"deny: [{{image: 'nginx@sha256:{'a' * 10}', reason: r}}]", "deny[0].image"),
        ("deny: [{image: nginx, reason: r, colour: red}]", "deny[0].colour"),
        ("deny: [{image: nginx, reason: r, kind: allow}]", "deny[0].kind"),
        ("deny: [{image: nginx, reason: r, apps: [a, b]}]", "deny[0].apps"),
        (
            "deny: [{image: nginx, reason: r}, {image: docker.io/library/nginx, reason: s}]",
            "deny[1].id",
        ),
        ("deny: {image: nginx}", "deny"),
        ("deny: [nginx]", "deny[0]"),
        ("allow: [{projects: x}]", "allow[0].registries"),
        ("allow: [{registries: [ghcr.io/acme]}]", "allow[0].registries[0]"),
        ("allow: [{repositories: ['ghcr.io/acme/app:1']}]", "allow[0].repositories[0]"),
        ("allow: [{repositories: ['ghcr.io/Acme/*']}]", "allow[0].repositories[0]"),
        ("allow: [{registries: [5]}]", "allow[0].registries[0]"),
        ("allow: [{registries: x, image: nginx}]", "allow[0].image"),
        ("rules: []", "rules"),
        ("- nginx", "policy file"),
        ("deny: [unclosed", "policy file"),
    ],
)
def test_bad_policy_names_entry_and_field(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_file(text)
    assert caught.value.field == where
    assert str(caught.value).startswith(f"{where}: ")


def test_validate_rule_accepts_a_policy_record_and_normalises() -> None:
    record = {
        "schema": "synctrail.policy-rule/v1",
        "id": "r1",
        "kind": "allow",
        "reason": "",
        "image": None,
        "patterns": ["index.docker.io", "acme/*", "GHCR.io"],
        "apps": "*",
        "projects": "*",
        "namespaces": "*",
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    rule = validate_rule(record)
    assert rule["patterns"] == ["docker.io", "docker.io/acme/*", "ghcr.io"]
    assert rule["id"] == "r1"
    assert rule["created_at"] == "2026-01-01T00:00:00.000Z"


def test_rule_id_for_is_the_id_validate_rule_derives() -> None:
    rule = {"kind": "deny", "image": "nginx:1.25", "reason": "r", "namespaces": "prod-*"}
    assert rule_id_for(rule) == "deny:docker.io/library/nginx:1.25|namespaces=prod-*"
    assert validate_rule(rule)["id"] == rule_id_for(rule)
    assert rule_id_for({**rule, "image": "docker.io/library/nginx:1.25"}) == rule_id_for(rule)


def test_validate_rule_rejects_unknown_kind() -> None:
    with pytest.raises(PolicyError, match="kind"):
        validate_rule({"kind": "maybe", "image": "x", "reason": "r"})


# -- deny matching -------------------------------------------------------------------------------


def test_exact_deny_matches_normalised_reference_only() -> None:
    rules = load_policy_file("deny: [{image: 'nginx:1.25.0', reason: CVE}]")
    hits = violations(
        ["docker.io/library/nginx:1.25.0", "docker.io/library/nginx:1.25.1"], rules, OTHER
    )
    assert hits == [
        ("denylist", "deny:docker.io/library/nginx:1.25.0", "docker.io/library/nginx:1.25.0")
    ]


def test_deny_by_tag_also_matches_that_tag_pinned_by_digest() -> None:
    rules = load_policy_file("deny: [{image: 'nginx:1.25.0', reason: CVE}]")
    assert images_matching_rule(rules[0], [f"nginx:1.25.0@{SHA_A}"]) == [
        f"docker.io/library/nginx:1.25.0@{SHA_A}"
    ]


def test_deny_without_tag_matches_every_tag_and_latest_only_latest() -> None:
    all_tags = validate_rule({"kind": "deny", "image": "nginx", "reason": "r"})
    latest = validate_rule({"kind": "deny", "image": "nginx:latest", "reason": "r"})
    images = ["nginx:1", "nginx", f"nginx@{SHA_A}", "redis:7"]
    assert images_matching_rule(all_tags, images) == [
        "docker.io/library/nginx:1",
        "docker.io/library/nginx:latest",
        f"docker.io/library/nginx@{SHA_A}",
    ]
    assert images_matching_rule(latest, images) == ["docker.io/library/nginx:latest"]


def test_repository_and_tag_globs() -> None:
    rule = validate_rule({"kind": "deny", "image": "ghcr.io/acme/*:*-debug", "reason": "r"})
    images = [
        "ghcr.io/acme/api:1.2-debug",
        "ghcr.io/acme/api:1.2",
        "ghcr.io/other/api:1-debug",
        "ghcr.io/acme/team/x:2-debug",
    ]
    assert images_matching_rule(rule, images) == [
        "ghcr.io/acme/api:1.2-debug",
        "ghcr.io/acme/team/x:2-debug",
    ]


def test_hub_short_globs_are_normalised() -> None:
    rule = validate_rule({"kind": "deny", "image": "acme/*:1.*", "reason": "r"})
    assert rule["image"] == "docker.io/acme/*:1.*"
    assert images_matching_rule(rule, ["acme/api:1.2", "acme/api:2.0", "ghcr.io/acme/api:1.2"]) == [
        "docker.io/acme/api:1.2"
    ]


def test_any_repository_glob() -> None:
    rule = validate_rule({"kind": "deny", "image": "*:*-debug", "reason": "r"})
    assert rule["image"] == "*:*-debug"
    assert images_matching_rule(rule, ["nginx:x-debug", "quay.io/a/b:1-debug", "nginx:1"]) == [
        "docker.io/library/nginx:x-debug",
        "quay.io/a/b:1-debug",
    ]


def test_bare_digest_matches_any_repository_with_that_digest() -> None:
    rule = validate_rule({"kind": "deny", "image": SHA_A, "reason": "compromised"})
    images = [
        f"ghcr.io/a/b@{SHA_A}",
        f"quay.io/c/d:1@{SHA_A}",
        f"ghcr.io/a/b@{SHA_B}",
        "ghcr.io/a/b:1",
    ]
    assert images_matching_rule(rule, images) == [f"ghcr.io/a/b@{SHA_A}", f"quay.io/c/d:1@{SHA_A}"]


def test_repository_digest_matches_only_that_repository() -> None:
    rule = validate_rule({"kind": "deny", "image": f"ghcr.io/a/b@{SHA_A}", "reason": "r"})
    assert images_matching_rule(rule, [f"ghcr.io/a/b:1@{SHA_A}", f"ghcr.io/x/y@{SHA_A}"]) == [
        f"ghcr.io/a/b:1@{SHA_A}"
    ]


def test_deny_rule_scope_is_honoured_by_find_violations() -> None:
    rule = validate_rule({"kind": "deny", "image": "nginx", "reason": "r", "projects": "payments"})
    assert violations(["nginx:1"], [rule], PAYMENTS) == [
        ("denylist", rule["id"], "docker.io/library/nginx:1")
    ]
    assert violations(["nginx:1"], [rule], OTHER) == []


def test_violation_carries_reason() -> None:
    rules = load_policy_file(POLICY)
    found = find_violations(["nginx:1.25.0"], rules, **OTHER)
    assert found == [
        {
            "rule": "denylist",
            "rule_id": "deny:docker.io/library/nginx:1.25.0",
            "image": "docker.io/library/nginx:1.25.0",
            "reason": "CVE-2024-1234",
        }
    ]


# -- allow matching --------------------------------------------------------------------------------


def test_allowlist_flags_images_outside_for_matching_projects() -> None:
    rules = load_policy_file(POLICY)
    allow_id = rules[-1]["id"]
    images = [
        "registry.local:5000/payments/worker:2.4.0",
        "ghcr.io/acme/ui:1",
        "quay.io/evil/miner:1",
    ]
    assert violations(images, rules, PAYMENTS) == [("unexpected", allow_id, "quay.io/evil/miner:1")]
    # the allow rule does not apply to other projects: nothing is unexpected there
    assert violations(images, rules, OTHER) == []


def test_image_allowed_by_any_applicable_allow_rule_is_fine() -> None:
    rules = load_policy_file(
        "allow:\n"
        "  - registries: [ghcr.io]\n"
        "  - namespaces: payments\n    registries: ['registry.local:5000']\n"
    )
    images = ["ghcr.io/a/b:1", "registry.local:5000/p/api:1", "docker.io/library/redis:7"]
    hits = violations(images, rules, PAYMENTS)
    assert [h[2] for h in hits] == ["docker.io/library/redis:7"]
    assert hits[0][1] == min(r["id"] for r in rules)  # attributed to the smallest applicable id
    assert [h[2] for h in violations(images, rules, OTHER)] == [
        "docker.io/library/redis:7",
        "registry.local:5000/p/api:1",
    ]


def test_registry_globs_and_hub_repositories() -> None:
    rule = validate_rule(
        {"kind": "allow", "registries": ["*.acme.io"], "repositories": ["nginx", "bitnami/*"]}
    )
    images = ["eu.acme.io/x/y:1", "nginx:1", "bitnami/redis:7", "redis:7", "acme.io/x:1"]
    assert images_matching_rule(rule, images) == [
        "docker.io/bitnami/redis:7",
        "docker.io/library/nginx:1",
        "eu.acme.io/x/y:1",
    ]


def test_wildcard_repository_allows_everything() -> None:
    rule = validate_rule({"kind": "allow", "repositories": ["*"]})
    assert violations(["quay.io/a/b:1", "nginx"], [rule], OTHER) == []


def test_app_glob_matches_qualified_or_plain_name() -> None:
    rule = validate_rule({"kind": "allow", "registries": ["ghcr.io"], "apps": "argocd/pay*"})
    assert rule_applies(rule, **PAYMENTS)
    assert not rule_applies({**rule, "apps": "team/pay*"}, **PAYMENTS)
    assert rule_applies({**rule, "apps": "payments-*"}, **PAYMENTS)
    assert not rule_applies(rule, **OTHER)


def test_unknown_project_or_namespace_only_matches_star() -> None:
    scope = {**PAYMENTS, "project": None, "namespace": None}
    assert rule_applies({"projects": "*", "namespaces": "*"}, **scope)
    assert not rule_applies({"projects": "payments*"}, **scope)


# -- robustness and ordering ---------------------------------------------------------------------


def test_violations_sorted_by_image_then_rule_id_and_deduplicated() -> None:
    rules = load_policy_file(
        """
deny:
  - image: "*:*-debug"
    reason: debug
  - image: nginx
    reason: no nginx
allow:
  - registries: [ghcr.io]
"""
    )
    images = [
        "nginx:1-debug",
        "nginx:1-debug",
        "ghcr.io/a/b:1-debug",
        "docker.io/library/nginx:1-debug",
    ]
    hits = violations(images, rules, OTHER)
    assert hits == sorted(hits, key=lambda h: (h[2], h[1]))
    assert [h[2] for h in hits].count("docker.io/library/nginx:1-debug") == 3  # 2 deny + unexpected
    assert len(hits) == len(set(hits))


def test_invalid_images_and_garbage_rules_are_skipped_not_raised() -> None:
    rules: list[Any] = [
        {"kind": "deny", "image": "NOPE", "reason": "r"},
        "junk",
        *load_policy_file(POLICY),
    ]
    hits = violations(["Bad Image", "nginx:1.25.0"], rules, OTHER)
    assert hits == [
        ("denylist", "deny:docker.io/library/nginx:1.25.0", "docker.io/library/nginx:1.25.0")
    ]
    assert images_matching_rule({"kind": "deny"}, ["nginx"]) == []


def test_rule_without_id_gets_the_derived_one_in_violations() -> None:
    rule = {"kind": "deny", "image": "nginx:1", "reason": "r"}
    assert violations(["nginx:1"], [rule], OTHER)[0][1] == "deny:docker.io/library/nginx:1"
