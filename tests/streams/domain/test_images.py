"""Image reference parsing and normalisation: Docker's reference rules, one by one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.images import (
    ImageRef,
    InvalidImageReference,
    normalize_image,
    parse_image,
    split_registry,
)

SHA_A = "sha256:" + "a" * 64
SHA_FA = "sha256:fa5639883dc3f883d6610b008a844e57130b8254771e3fd3c064142892275cc3"


@pytest.mark.parametrize(
    ("reference", "normalised"),
    [
        # no registry → docker.io; one-segment Hub names get library/; no tag → :latest
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:latest", "docker.io/library/nginx:latest"),
        ("docker.io/library/nginx:latest", "docker.io/library/nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/nginx:1.27", "docker.io/library/nginx:1.27"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("redis:7.2.4", "docker.io/library/redis:7.2.4"),
        # two-segment Hub names keep their namespace
        ("envoyproxy/envoy:v1.30.1", "docker.io/envoyproxy/envoy:v1.30.1"),
        ("valkey/valkey:7.2.5", "docker.io/valkey/valkey:7.2.5"),
        # a first segment with '.' is a registry
        ("ghcr.io/acme/guestbook-ui:v1.5.0", "ghcr.io/acme/guestbook-ui:v1.5.0"),
        ("quay.io/acme/tenant-tools", "quay.io/acme/tenant-tools:latest"),
        # ... with ':' (a port) too
        ("registry.local:5000/team/app:1.2", "registry.local:5000/team/app:1.2"),
        ("myregistry:5000/app", "myregistry:5000/app:latest"),
        # localhost is a registry, and other registries never get library/
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("ghcr.io/app", "ghcr.io/app:latest"),
        # an IP address or IPv6 literal with port
        ("10.0.0.1:5000/app:1", "10.0.0.1:5000/app:1"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        # Docker treats an upper-case first segment as a registry (Hub paths are lower-case)
        ("Registry/app:1", "Registry/app:1"),
        # digests are kept, alone or with a tag
        (f"nginx@{SHA_A}", f"docker.io/library/nginx@{SHA_A}"),
        (f"nginx:1.27@{SHA_A}", f"docker.io/library/nginx:1.27@{SHA_A}"),
        (
            f"registry.local:5000/payments/api@{SHA_FA}",
            f"registry.local:5000/payments/api@{SHA_FA}",
        ),
        # path separators: '.', '_', '__', '-' runs
        ("ab_c__d--e/f.g-h:1", "docker.io/ab_c__d--e/f.g-h:1"),
        # tag alphabet: word characters, '.', '-' (upper case allowed in tags)
        ("app:V1.0_rc-1", "docker.io/library/app:V1.0_rc-1"),
        ("app:" + "t" * 128, "docker.io/library/app:" + "t" * 128),
        # deep paths
        ("registry.k8s.io/a/b/c/d:1", "registry.k8s.io/a/b/c/d:1"),
    ],
)
def test_normalises_per_docker_reference_rules(reference: str, normalised: str) -> None:
    assert normalize_image(reference) == normalised


def test_nginx_spellings_are_the_same_image() -> None:
    refs = {parse_image(r) for r in ("nginx", "nginx:latest", "docker.io/library/nginx:latest")}
    assert refs == {ImageRef("docker.io", "library/nginx", "latest", None)}


def test_parsed_parts_of_registry_with_port() -> None:
    ref = parse_image("registry.local:5000/team/app:1.2")
    assert (ref.registry, ref.path, ref.tag, ref.digest) == (
        "registry.local:5000",
        "team/app",
        "1.2",
        None,
    )
    assert ref.repository == "registry.local:5000/team/app"


def test_tag_and_digest_both_kept() -> None:
    ref = parse_image(f"registry.k8s.io/ingress-nginx/controller:v1.10.0@{SHA_A}")
    assert ref.tag == "v1.10.0"
    assert ref.digest == SHA_A
    assert ref.repository == "registry.k8s.io/ingress-nginx/controller"


def test_digest_only_reference_has_no_tag_and_no_latest() -> None:
    ref = parse_image(f"ghcr.io/acme/api@{SHA_A}")
    assert ref.tag is None
    assert str(ref) == f"ghcr.io/acme/api@{SHA_A}"


def test_str_adds_latest_only_without_tag_and_digest() -> None:
    assert str(ImageRef("docker.io", "library/nginx", None, None)) == (
        "docker.io/library/nginx:latest"
    )
    assert str(ImageRef("docker.io", "library/nginx", None, SHA_A)) == (
        f"docker.io/library/nginx@{SHA_A}"
    )


def test_other_digest_algorithms_need_32_hex_digits() -> None:
    assert parse_image("app@sha512:" + "b" * 128).digest == "sha512:" + "b" * 128
    assert parse_image("app@blake3:" + "c" * 64).digest == "blake3:" + "c" * 64
    with pytest.raises(InvalidImageReference):
        parse_image("app@blake3:" + "c" * 31)


def test_split_registry_applies_defaults() -> None:
    assert split_registry("nginx") == ("docker.io", "library/nginx")
    assert split_registry("acme/app") == ("docker.io", "acme/app")
    assert split_registry("index.docker.io/acme/app") == ("docker.io", "acme/app")
    assert split_registry("localhost/app") == ("localhost", "app")


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("", "empty"),
        ("NGINX", "lower-case"),
        ("ghcr.io/Acme/app:1", "lower-case"),
        ("nginx:", "tag"),
        ("nginx:-bad", "tag"),
        ("nginx:" + "t" * 129, "tag"),
        ("nginx:a+b", "tag"),
        ("nginx@sha256:abc", "64 lower-case hex"),
        ("nginx@sha256:" + "A" * 64, "64 lower-case hex"),
        ("nginx@sha256:" + "a" * 63, "64 lower-case hex"),
        ("nginx@sha256", "algorithm:hex"),
        ("nginx@1sha:" + "a" * 64, "algorithm:hex"),
        ("nginx@@sha256:" + "a" * 64, "more than one '@'"),
        ("ngi nx", "whitespace"),
        (" nginx", "whitespace"),
        ("nginx\n", "whitespace"),
        ("nginx\t:1", "whitespace"),
        (":1.0", "no repository name"),
        ("/nginx", "repository path"),
        ("nginx/", "repository path"),
        ("ghcr.io//app", "repository path"),
        ("a..b", "repository path"),
        ("-app", "repository path"),
        ("app_", "repository path"),
        ("a___b", "repository path"),
        ("ghcr.io/", "repository path"),
        ("exa_mple.com/app", "registry"),
        ("a.b_c/app", "registry"),  # a '.' makes the first segment a registry
        ("-bad.io/app", "registry"),
        ("registry.local:port/app", "registry"),
        ("a" * 64, "image ID"),
        ("ghcr.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_invalid_references_are_refused_with_a_reason(reference: str, problem: str) -> None:
    with pytest.raises(InvalidImageReference) as caught:
        parse_image(reference)
    message = str(caught.value)
    assert problem in message
    assert repr(reference) in message  # the message names the reference


def test_non_strings_are_invalid_not_a_crash() -> None:
    for value in (None, 5, ["nginx"], {"a": 1}):
        with pytest.raises(InvalidImageReference, match="expected a string"):
            parse_image(value)  # type: ignore[arg-type]


def test_invalid_reference_is_a_value_error() -> None:
    assert issubclass(InvalidImageReference, ValueError)


# -- properties --------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}(?:[._-][a-z0-9]{1,4}){0,2}", fullmatch=True)
# Without a registry, a first segment with '.' would be taken for one (and be refused).
_first_component = st.from_regex(r"[a-z0-9]{1,6}(?:[_-][a-z0-9]{1,4}){0,2}", fullmatch=True)
_registry = st.sampled_from(
    ["", "docker.io/", "index.docker.io/", "ghcr.io/", "localhost/", "registry.local:5000/"]
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@st.composite
def references(draw: st.DrawFn) -> str:
    path = "/".join([draw(_first_component), *draw(st.lists(_component, max_size=2))])
    text = draw(_registry) + path
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@settings(deadline=None)
@given(references())
def test_normalisation_is_idempotent(reference: str) -> None:
    once = normalize_image(reference)
    assert normalize_image(once) == once
    assert parse_image(once) == parse_image(reference)


@settings(deadline=None)
@given(references())
def test_normalised_form_always_has_registry_and_tag_or_digest(reference: str) -> None:
    ref = parse_image(reference)
    assert "/" in ref.path or ref.registry != "docker.io"
    assert ref.tag is not None or ref.digest is not None
    assert str(ref).startswith(ref.repository)


@settings(deadline=None)
@given(st.text(max_size=80))
def test_parse_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        ref = parse_image(text)
    except InvalidImageReference:
        return
    assert isinstance(ref, ImageRef)
    assert normalize_image(str(ref)) == str(ref)


@settings(deadline=None)
@given(st.text(alphabet="aZ09._-:/@[]", max_size=40))
def test_parse_never_crashes_on_reference_like_text(text: str) -> None:
    try:
        ref = parse_image(text)
    except InvalidImageReference:
        return
    assert normalize_image(str(ref)) == str(ref)
