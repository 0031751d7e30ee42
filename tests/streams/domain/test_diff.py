"""Image diffs by repository (docs/derivation.md), fingerprints, canonical hashes; with properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.diff import ImageDiff, apply_diff, canonical_sha256, diff_images, fingerprint

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "b" * 64


def test_first_operation_adds_every_running_image() -> None:
    d = diff_images([], ["ghcr.io/a/ui:v1", "docker.io/library/redis:7"])
    assert d == ImageDiff(
        added=["docker.io/library/redis:7", "ghcr.io/a/ui:v1"], removed=[], changed=[]
    )


def test_tag_bump_is_a_change_not_add_and_remove() -> None:
    d = diff_images(["ghcr.io/a/ui:v1.4.0"], ["ghcr.io/a/ui:v1.5.0"])
    assert d == ImageDiff(
        added=[],
        removed=[],
        changed=[
            {
                "repository": "ghcr.io/a/ui",
                "from": "ghcr.io/a/ui:v1.4.0",
                "to": "ghcr.io/a/ui:v1.5.0",
            }
        ],
    )


def test_digest_change_is_a_change() -> None:
    d = diff_images([f"r:5000/p/api@{SHA_A}"], [f"r:5000/p/api@{SHA_B}"])
    assert d.changed == [
        {
            "repository": "r:5000/p/api",
            "from": f"r:5000/p/api@{SHA_A}",
            "to": f"r:5000/p/api@{SHA_B}",
        }
    ]


def test_tag_and_digest_change_together_is_one_change() -> None:
    d = diff_images([f"k8s.io/c:v1.10.0@{SHA_A}"], [f"k8s.io/c:v1.10.1@{SHA_B}"])
    assert [(c["from"], c["to"]) for c in d.changed] == [
        (f"k8s.io/c:v1.10.0@{SHA_A}", f"k8s.io/c:v1.10.1@{SHA_B}")
    ]
    assert d.added == d.removed == []


def test_repository_gone_is_removed_and_new_repository_added() -> None:
    d = diff_images(
        ["docker.io/library/redis:7", "ghcr.io/a/ui:v1"],
        ["ghcr.io/a/ui:v1", "docker.io/envoyproxy/envoy:v1"],
    )
    assert d == ImageDiff(
        added=["docker.io/envoyproxy/envoy:v1"], removed=["docker.io/library/redis:7"], changed=[]
    )


def test_equal_sets_give_empty_diff() -> None:
    d = diff_images(["a:1", "b:2"], ["b:2", "a:1"])
    assert d.is_empty
    assert not diff_images([], ["a:1"]).is_empty


def test_spellings_of_the_same_image_are_no_change() -> None:
    assert diff_images(["nginx"], ["docker.io/library/nginx:latest"]).is_empty


def test_repository_with_two_tags_losing_one_reports_it_removed() -> None:
    before = ["docker.io/library/nginx:1.26", "docker.io/library/nginx:1.27"]
    d = diff_images(before, ["docker.io/library/nginx:1.27"])
    assert d == ImageDiff(added=[], removed=["docker.io/library/nginx:1.26"], changed=[])


def test_repository_gaining_a_second_tag_reports_it_added() -> None:
    d = diff_images(
        ["docker.io/library/nginx:1.27"],
        ["docker.io/library/nginx:1.27", "docker.io/library/nginx:1.28"],
    )
    assert d == ImageDiff(added=["docker.io/library/nginx:1.28"], removed=[], changed=[])


def test_two_tags_both_bumped_pair_in_sorted_order() -> None:
    d = diff_images(["x.io/a:1", "x.io/a:2"], ["x.io/a:3", "x.io/a:4"])
    assert d.changed == [
        {"repository": "x.io/a", "from": "x.io/a:1", "to": "x.io/a:3"},
        {"repository": "x.io/a", "from": "x.io/a:2", "to": "x.io/a:4"},
    ]


def test_repushed_tag_pairs_with_same_tag_first() -> None:
    # 'v2' was re-pushed (new digest) while 'v1' moved to 'v3'.
    before = [f"x.io/a:v1@{SHA_A}", f"x.io/a:v2@{SHA_A}"]
    after = [f"x.io/a:v2@{SHA_B}", f"x.io/a:v3@{SHA_B}"]
    d = diff_images(before, after)
    assert sorted((c["from"], c["to"]) for c in d.changed) == [
        (f"x.io/a:v1@{SHA_A}", f"x.io/a:v3@{SHA_B}"),
        (f"x.io/a:v2@{SHA_A}", f"x.io/a:v2@{SHA_B}"),
    ]


def test_changes_sorted_by_repository() -> None:
    d = diff_images(["z.io/b:1", "a.io/b:1"], ["z.io/b:2", "a.io/b:2"])
    assert [c["repository"] for c in d.changed] == ["a.io/b", "z.io/b"]


def test_invalid_references_do_not_crash_and_group_by_themselves() -> None:
    d = diff_images(["Bad Ref", "a:1"], ["a:1"])
    assert d.removed == ["Bad Ref"]


def test_apply_diff_examples() -> None:
    before = ["docker.io/library/redis:7", "ghcr.io/a/ui:v1"]
    after = ["ghcr.io/a/ui:v2", "docker.io/envoyproxy/envoy:v1"]
    assert apply_diff(before, diff_images(before, after)) == set(after)


# -- fingerprint and canonical hash ----------------------------------------------------------


def test_fingerprint_is_sha256_and_ignores_image_order_and_duplicates() -> None:
    f = fingerprint("abc", [], ["b:1", "a:1"])
    assert f.startswith("sha256:") and len(f) == len("sha256:") + 64
    assert f == fingerprint("abc", [], ["a:1", "b:1", "a:1"])


def test_fingerprint_changes_with_revision_revisions_order_and_images() -> None:
    base = fingerprint("", ["2.7.0", "abc"], ["a:1"])
    assert base != fingerprint("", ["2.7.0", "abd"], ["a:1"])
    assert base != fingerprint("", ["abc", "2.7.0"], ["a:1"])
    assert base != fingerprint("x", ["2.7.0", "abc"], ["a:1"])
    assert base != fingerprint("", ["2.7.0", "abc"], ["a:2"])
    # no ambiguity between a revision and a one-element revisions list
    assert fingerprint("a", [], []) != fingerprint("", ["a"], [])


def test_canonical_sha256_ignores_key_order_but_not_values() -> None:
    a = {"resources": [{"name": "x", "kind": "Deployment"}], "revision": "r"}
    b = {"revision": "r", "resources": [{"kind": "Deployment", "name": "x"}]}
    assert canonical_sha256(a) == canonical_sha256(b)
    assert canonical_sha256(a) != canonical_sha256({**a, "revision": "s"})
    assert len(canonical_sha256(None)) == 64


# -- properties ------------------------------------------------------------------------------

_repo = st.sampled_from(
    ["docker.io/library/nginx", "ghcr.io/acme/ui", "registry.local:5000/p/api", "quay.io/a/b"]
)
_suffix = st.sampled_from(
    [":1", ":2", ":latest", f"@{SHA_A}", f"@{SHA_B}", f":1@{SHA_A}", f":2@{SHA_B}"]
)
_image = st.builds(lambda r, s: r + s, _repo, _suffix)
_images = st.lists(_image, max_size=8)


def _flipped(d: ImageDiff) -> list[tuple[str, str, str]]:
    return sorted((c["repository"], c["to"], c["from"]) for c in d.changed)


@settings(deadline=None)
@given(_images)
def test_diff_of_a_set_with_itself_is_empty(a: list[str]) -> None:
    assert diff_images(a, a).is_empty
    assert diff_images(a, list(reversed(a))).is_empty


@settings(deadline=None)
@given(_images, _images)
def test_swapping_sides_swaps_added_removed_and_from_to(a: list[str], b: list[str]) -> None:
    ab, ba = diff_images(a, b), diff_images(b, a)
    assert ab.added == ba.removed
    assert ab.removed == ba.added
    assert _flipped(ab) == sorted((c["repository"], c["from"], c["to"]) for c in ba.changed)


@settings(deadline=None)
@given(_images, _images)
def test_applying_the_diff_yields_the_other_set(a: list[str], b: list[str]) -> None:
    assert apply_diff(a, diff_images(a, b)) == set(b)


@settings(deadline=None)
@given(_images, _images)
def test_changed_repositories_run_on_both_sides_added_only_after(
    a: list[str], b: list[str]
) -> None:
    d = diff_images(a, b)
    for change in d.changed:
        assert change["from"] in a and change["to"] in b
        assert change["from"].startswith(change["repository"])
    assert set(d.added) <= set(b) - set(a)
    assert set(d.removed) <= set(a) - set(b)
