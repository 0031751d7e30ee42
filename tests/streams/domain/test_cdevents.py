"""CDEvents from deployment records (pure): the event type, environment, artifact and schema.

The deployments are the real ones: the example payloads (``examples/payloads/``) go through
the bridge's record builders and the worker's ``decide`` in delivery order, and every CDEvent
they give is validated against the CDEvents JSON Schemas vendored in ``schemas/cdevents/``
(``$ref``s resolved from those files, never over the network). ``decide`` builds them as the
worker writes them, keeping the app's environments in its state (seeded for a state written
before it kept them).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from jsonschema import Draft202012Validator, ValidationError
from packageurl import PackageURL
from referencing.exceptions import Unresolvable

from connectors.bridge.events import bare_event, envelope_event
from streams.domain import cdevents
from streams.domain.cdevents import (
    SERVICE_DEPLOYED,
    SERVICE_ROLLEDBACK,
    SERVICE_UPGRADED,
    artifact_image,
    deployed_before,
    environment_id,
    environments_after,
    image_purl,
    known_environments,
    service_event,
)
from streams.domain.cloudevents import cdevent_headers
from streams.domain.decide import Context, decide
from streams.domain.images import InvalidImageReference, parse_image
from tests.contracts import CDEVENTS_SCHEMAS, cdevents_registry, validate_cdevent
from tests.streams.domain.test_decide import event as decide_event
from tests.streams.domain.test_images import references
from tests.support import REPO, load_expected

PAYLOADS = REPO / "examples" / "payloads"
SOURCE = "/synctrail/test"
NOW = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def test_the_vendored_schemas_are_the_specs_with_their_licence():
    licence = (REPO / "schemas" / "cdevents" / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence
    for type_, name in cdevents.SCHEMA_FILES.items():
        schema = json.loads((CDEVENTS_SCHEMAS / name).read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$id"].startswith(f"https://cdevents.dev/{cdevents.SPEC_VERSION}/schema/")
        assert schema["properties"]["context"]["properties"]["type"]["enum"] == [type_]


def test_links_are_resolved_from_the_vendored_files():
    event = _fixture_events()[0][1]
    linked = copy.deepcopy(event)
    linked["context"]["links"] = [{"linkType": "PATH", "from": {"contextId": "abc"}}]
    validate_cdevent(linked)  # the $ref chain links/embeddedlinksarray -> embeddedlinkpath resolves
    linked["context"]["links"] = [{"linkType": "PATH"}]  # embeddedlinkpath needs "from"
    with pytest.raises(ValidationError, match="not valid under any of the given schemas"):
        validate_cdevent(linked)
    # and a reference the files do not hold is refused, not looked up on the network
    with pytest.raises(Unresolvable):
        cdevents_registry().resolver().lookup("https://cdevents.dev/0.5.1/schema/links/nothing")


# -- the example payloads, decided in delivery order ---------------------------------------------


def _sync_event(entry: dict[str, Any], n: int) -> dict[str, Any]:
    raw = (PAYLOADS / entry["file"]).read_bytes()
    body = orjson.loads(raw)
    ids = {"delivery_id": f"{n:032x}", "received_at": f"2026-11-28T09:{n:02d}:00.000Z"}
    if entry["shape"] == "envelope":
        return envelope_event(body, raw, default_namespace="argocd", **ids)
    namespace, name = entry["app"].split("/")
    return bare_event(body, raw, namespace=namespace, name=name, **ids)


def _deployments() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(payload entry, deployment record) for every announced operation of the examples."""
    entries = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    states: dict[str, Any] = {}
    out = []
    for n, entry in enumerate(entries, 1):
        decision = decide(_sync_event(entry, n), states.get(entry["app"]), [], now=NOW)
        if decision.state is not None:
            states[entry["app"]] = decision.state
        if decision.deployment is not None:
            out.append((entry, decision.deployment))
    return out


@cache
def _fixture_events() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, CDEvent) in order, the environments kept per app as the worker would."""
    environments: dict[str, list[str]] = {}
    out = []
    for entry, deployment in _deployments():
        known = environments.get(entry["app"], [])
        event = service_event(
            deployment, deployed_before=deployed_before(known, deployment), source=SOURCE
        )
        environments[entry["app"]] = environments_after(known, deployment)
        if event is not None:
            out.append((deployment, event))
    return out


def test_every_cdevent_of_the_example_payloads_validates_against_the_spec_schema():
    events = _fixture_events()
    assert len(events) == 8  # guestbook 4, ingress-nginx 2, storefront 2 (see below)
    for _, event in events:
        validate_cdevent(event)


def test_first_deploy_into_an_environment_is_deployed_and_later_ones_upgraded():
    got = [(event["subject"]["id"], event["context"]["type"]) for _, event in _fixture_events()]
    assert got == [
        ("argocd/guestbook", SERVICE_DEPLOYED),
        ("argocd/guestbook", SERVICE_UPGRADED),
        ("argocd/ingress-nginx", SERVICE_DEPLOYED),
        ("argocd/guestbook", SERVICE_UPGRADED),
        ("argocd/storefront", SERVICE_DEPLOYED),
        ("argocd/ingress-nginx", SERVICE_UPGRADED),
        ("argocd/guestbook", SERVICE_UPGRADED),
        ("argocd/storefront", SERVICE_UPGRADED),
    ]


def test_failed_operations_bare_only_apps_and_apps_without_images_give_no_cdevent():
    announced = {(e["file"], d["delivery_id"]) for e, d in _deployments()}
    with_event = {d["delivery_id"] for d, _ in _fixture_events()}
    silent = sorted(f for f, delivery in announced if delivery not in with_event)
    assert silent == [
        "02-payments-api-rev-a.json",  # bare: no destination known
        "06-payments-api-rev-b.json",
        "12-cluster-rbac.json",  # bare, and no image at all
        "13-guestbook-rev-e-failed.json",  # Failed
        "14-tenant-configs-300-resources.json",  # bare
    ]
    failed = next(d for e, d in _deployments() if e["file"].startswith("13-"))
    assert service_event(failed, deployed_before=True, source=SOURCE) is None
    no_images = {**failed, "operation": {**failed["operation"], "phase": "Succeeded"}}
    no_images.update(images=[], images_added=[], images_changed=[])
    assert service_event(no_images, deployed_before=True, source=SOURCE) is None


def test_the_environment_is_the_argo_cd_destination():
    by_app = {
        e["subject"]["id"]: e["subject"]["content"]["environment"] for _, e in _fixture_events()
    }
    assert by_app == {
        "argocd/guestbook": {"id": "https://kubernetes.default.svc/guestbook"},
        "argocd/ingress-nginx": {"id": "https://kubernetes.default.svc/ingress-nginx"},
        "argocd/storefront": {"id": "https://k8s-prod-eu.acme.example:6443/storefront"},
    }
    assert environment_id({"server": "", "name": "prod-eu", "namespace": "shop"}) == "prod-eu/shop"
    assert (
        environment_id({"server": "https://x:6443", "name": "", "namespace": ""})
        == "https://x:6443"
    )
    assert environment_id({"server": "", "name": "", "namespace": "shop"}) is None
    assert environment_id(None) is None


def test_a_new_destination_is_a_first_deploy_again_and_a_failure_does_not_count():
    deployment, _ = _fixture_events()[1]  # guestbook, upgraded
    known = environments_after([], _fixture_events()[0][0])
    assert deployed_before(known, deployment)
    moved = {
        **deployment,
        "destination": {"server": "", "name": "prod-eu", "namespace": "guestbook"},
    }
    assert not deployed_before(known, moved)
    event = service_event(moved, deployed_before=deployed_before(known, moved), source=SOURCE)
    assert event is not None and event["context"]["type"] == SERVICE_DEPLOYED
    failed = {**moved, "operation": {**moved["operation"], "phase": "Failed"}}
    assert environments_after(known, failed) == known
    assert environments_after(known, moved) == sorted([*known, "prod-eu/guestbook"])


def test_a_rollback_to_an_earlier_revision_is_rolledback():
    """guestbook rev-a, rev-b, then rev-a again (a later operation): decide flags it rollback."""
    entries = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    rev_a, rev_b = entries[0], entries[2]
    again = _sync_event(rev_a, 30)
    again["operation"]["started_at"] = "2026-11-28T11:00:00Z"
    again["operation"]["finished_at"] = "2026-11-28T11:00:09Z"
    state, environments, types = None, [], []
    for event in (_sync_event(rev_a, 1), _sync_event(rev_b, 2), again):
        decision = decide(event, state, [], now=NOW)
        state, deployment = decision.state, decision.deployment
        assert deployment is not None
        cdevent = service_event(
            deployment, deployed_before=deployed_before(environments, deployment), source=SOURCE
        )
        environments = environments_after(environments, deployment)
        assert cdevent is not None
        validate_cdevent(cdevent)
        types.append(cdevent["context"]["type"])
    assert deployment["rollback"] is True
    assert types == [SERVICE_DEPLOYED, SERVICE_UPGRADED, SERVICE_ROLLEDBACK]
    assert cdevent["context"]["timestamp"] == "2026-11-28T11:00:09Z"
    # the artifact is the image the rollback brought back
    assert cdevent["subject"]["content"]["artifactId"] == (
        "pkg:oci/guestbook-ui?repository_url=ghcr.io/acme/guestbook-ui&tag=v1.4.0"
    )


def test_a_rollback_into_a_new_environment_is_deployed():
    deployment, _ = _fixture_events()[1]
    rollback = {**deployment, "rollback": True}
    assert cdevents.event_type(rollback, deployed_before=True) == SERVICE_ROLLEDBACK
    assert cdevents.event_type(rollback, deployed_before=False) == SERVICE_DEPLOYED
    assert (
        cdevents.event_type({**rollback, "rollback": False}, deployed_before=True)
        == SERVICE_UPGRADED
    )


def test_the_artifact_is_the_first_changed_else_added_else_running_image():
    artifacts = [e["subject"]["content"]["artifactId"] for _, e in _fixture_events()]
    assert artifacts == [
        # 01 guestbook first deploy: first added (sorted)
        "pkg:oci/redis?repository_url=docker.io/library/redis&tag=7.2.4",
        # 03: the changed image
        "pkg:oci/guestbook-ui?repository_url=ghcr.io/acme/guestbook-ui&tag=v1.5.0",
        # 05 ingress-nginx: tag and digest
        "pkg:oci/controller@sha256:02494949d03c189ef99be6f0e253912f443517f3128f110ba95dda0e82ea47e2"
        "?repository_url=registry.k8s.io/ingress-nginx/controller&tag=v1.10.0",
        # 07: envoy added
        "pkg:oci/envoy?repository_url=docker.io/envoyproxy/envoy&tag=v1.30.1",
        "pkg:oci/valkey?repository_url=docker.io/valkey/valkey&tag=7.2.5",
        "pkg:oci/controller@sha256:8e96f19073a720fb6743e4c1ff850a9d92d11a51f1383ee77a8d887ac4f88e85"
        "?repository_url=registry.k8s.io/ingress-nginx/controller&tag=v1.10.1",
        # 10: redis removed, nothing changed or added: the first running image
        "pkg:oci/envoy?repository_url=docker.io/envoyproxy/envoy&tag=v1.30.1",
        "pkg:oci/storefront-web?repository_url=ghcr.io/acme/storefront-web&tag=2.7.1-hotfix.1",
    ]
    assert artifact_image({"images_changed": [], "images_added": [], "images": []}) is None


def test_custom_data_names_every_running_image_as_in_the_fixtures_oracle():
    expected = {e["file"]: e for e in load_expected() if e.get("valid")}
    files = {d["delivery_id"]: e["file"] for e, d in _deployments()}
    for deployment, event in _fixture_events():
        running = expected[files[deployment["delivery_id"]]]["runningImages"]
        assert event["customData"]["artifactIds"] == [image_purl(i) for i in running]
        assert event["customData"]["deliveryId"] == deployment["delivery_id"]


@pytest.mark.parametrize(
    ("reference", "purl"),
    [
        ("nginx", "pkg:oci/nginx?repository_url=docker.io/library/nginx&tag=latest"),
        ("nginx:1.27.2", "pkg:oci/nginx?repository_url=docker.io/library/nginx&tag=1.27.2"),
        (
            "bitnami/redis:7",
            "pkg:oci/redis?repository_url=docker.io/bitnami/redis&tag=7",
        ),
        (
            "index.docker.io/library/nginx:1",
            "pkg:oci/nginx?repository_url=docker.io/library/nginx&tag=1",
        ),
        (
            "registry.local:5000/payments/worker:2.3.1",
            "pkg:oci/worker?repository_url=registry.local:5000/payments/worker&tag=2.3.1",
        ),
        (
            "registry.local:5000/payments/api@sha256:" + "a" * 64,
            "pkg:oci/api@sha256:" + "a" * 64 + "?repository_url=registry.local:5000/payments/api",
        ),
        (
            "ghcr.io/acme/app:v1@sha256:" + "b" * 64,
            "pkg:oci/app@sha256:" + "b" * 64 + "?repository_url=ghcr.io/acme/app&tag=v1",
        ),
        (
            "localhost/team/app:dev",
            "pkg:oci/app?repository_url=localhost/team/app&tag=dev",
        ),
        (
            "[::1]:5000/app:1",
            "pkg:oci/app?repository_url=%5B::1%5D:5000/app&tag=1",
        ),
    ],
)
def test_image_purls_follow_the_oci_type(reference: str, purl: str):
    assert image_purl(reference) == purl
    parsed = PackageURL.from_string(purl)
    assert parsed.type == "oci" and parsed.namespace is None
    assert parsed.name == parsed.qualifiers["repository_url"].rsplit("/", 1)[-1]


def test_every_running_image_of_the_fixtures_has_a_purl_that_parses_back():
    images = {i for e in load_expected() if e.get("valid") for i in e["runningImages"]}
    assert any(":5000/" in i for i in images) and any("@sha256:" in i for i in images)
    for image in images:
        parsed = PackageURL.from_string(image_purl(image))
        _, _, digest = image.partition("@")
        assert parsed.version == (digest or None)
        assert image.startswith(parsed.qualifiers["repository_url"])


def test_an_invalid_reference_has_no_purl():
    with pytest.raises(InvalidImageReference):
        image_purl("Not An Image")


def test_the_context_id_is_stable_per_delivery_and_the_timestamp_is_the_finish():
    first = _fixture_events()
    _fixture_events.cache_clear()
    again = _fixture_events()  # the same payloads decided again: a replay
    assert [e["context"]["id"] for _, e in first] == [e["context"]["id"] for _, e in again]
    ids = [e["context"]["id"] for _, e in first]
    assert len(set(ids)) == len(ids)
    for deployment, event in first:
        assert event["context"]["timestamp"] == deployment["operation"]["finished_at"]
        assert event["context"]["source"] == SOURCE
        assert event["context"]["specversion"] == "0.5.1"
    deployment = first[0][0]
    bare = {**deployment, "operation": {**deployment["operation"], "finished_at": None}}
    event = service_event(bare, deployed_before=False, source=SOURCE)
    assert event is not None and event["context"]["timestamp"] == deployment["received_at"]
    assert event["context"]["id"] == first[0][1]["context"]["id"]


def test_a_cdevent_record_carries_its_context_in_the_cloudevents_headers():
    for _, event in _fixture_events():
        got = dict(cdevent_headers(event))
        assert got["ce_id"].decode() == event["context"]["id"]
        assert got["ce_type"].decode() == event["context"]["type"]
        assert got["ce_time"].decode() == event["context"]["timestamp"]
        assert got["ce_subject"].decode() == event["subject"]["id"]
        assert got["content-type"] == b"application/cdevents+json"
        assert orjson.loads(orjson.dumps(event)) == event  # the value, as the producer writes it


@settings(max_examples=200)
@given(references())
def test_every_valid_reference_has_a_purl_that_parses_back_to_its_parts(reference: str):
    ref = parse_image(reference)
    parsed = PackageURL.from_string(image_purl(reference))
    assert (parsed.type, parsed.namespace) == ("oci", None)
    assert parsed.name == ref.path.rsplit("/", 1)[-1]
    assert parsed.version == ref.digest
    assert parsed.qualifiers == {
        "repository_url": ref.repository,
        **({"tag": ref.tag} if ref.tag else {}),
    }


# -- decide builds them, keeping the app's environments in its state ------------------------------


def _decided(*events: dict[str, Any], state: dict[str, Any] | None = None) -> list[Any]:
    """Decide ``events`` in order from ``state``, with this test's event source."""
    decisions = []
    for e in events:
        decision = decide(e, state, [], now=NOW, ctx=Context(event_source=SOURCE))
        decisions.append(decision)
        state = decision.state if decision.state is not None else state
    return decisions


def _types(decisions: list[Any]) -> list[str | None]:
    return [d.cdevent["context"]["type"] if d.cdevent else None for d in decisions]


def _at(hour: int, revision: str, image: str, **kw: Any) -> dict[str, Any]:
    return decide_event(revision, {"web": image}, started=f"2026-07-06T{hour:02d}:00:00Z", **kw)


def test_decide_gives_deployed_then_upgraded_then_rolledback_each_valid():
    decisions = _decided(
        _at(9, "a" * 40, "nginx:1.1"),
        _at(10, "b" * 40, "nginx:1.2"),
        _at(11, "a" * 40, "nginx:1.1"),
    )
    assert _types(decisions) == [SERVICE_DEPLOYED, SERVICE_UPGRADED, SERVICE_ROLLEDBACK]
    for decision in decisions:
        validate_cdevent(decision.cdevent)
        assert decision.cdevent == service_event(
            decision.deployment,
            deployed_before=decision.cdevent["context"]["type"] != SERVICE_DEPLOYED,
            source=SOURCE,
        )
        assert decision.state["environments"] == ["https://k/shop"]
    assert decisions[0].cdevent["context"]["source"] == SOURCE


def test_with_cdevents_off_none_is_built_but_the_environments_are_kept():
    off = Context(event_source=SOURCE, cdevents=False)
    first = decide(_at(9, "a" * 40, "nginx:1.1"), None, [], now=NOW, ctx=off)
    assert first.deployment is not None and first.cdevent is None
    assert first.state["environments"] == ["https://k/shop"]
    # turned on again: the app already runs there, so its next deployment is an upgrade
    on = Context(event_source=SOURCE)
    second = decide(_at(10, "b" * 40, "nginx:1.2"), first.state, [], now=NOW, ctx=on)
    assert _types([second]) == [SERVICE_UPGRADED]


def test_decide_gives_no_cdevent_for_a_failure_which_does_not_count_as_deployed():
    failed = _at(9, "a" * 40, "nginx:1.1", phase="Failed")
    decisions = _decided(failed, _at(10, "b" * 40, "nginx:1.2"))
    assert decisions[0].deployment is not None and decisions[0].cdevent is None
    assert decisions[0].state["environments"] == []
    assert _types(decisions) == [None, SERVICE_DEPLOYED]


def test_decide_gives_deployed_again_for_a_new_destination_and_keeps_both():
    moved = _at(10, "b" * 40, "nginx:1.2")
    moved["destination"] = {"server": "", "name": "prod-eu", "namespace": "shop"}
    back = _at(11, "c" * 40, "nginx:1.3")
    decisions = _decided(_at(9, "a" * 40, "nginx:1.1"), moved, back)
    assert _types(decisions) == [SERVICE_DEPLOYED, SERVICE_DEPLOYED, SERVICE_UPGRADED]
    assert decisions[1].cdevent["subject"]["content"]["environment"] == {"id": "prod-eu/shop"}
    assert decisions[2].state["environments"] == ["https://k/shop", "prod-eu/shop"]


def test_resyncs_and_duplicates_give_none_and_keep_the_environments():
    first = _at(9, "a" * 40, "nginx:1.1")
    resync = _at(10, "a" * 40, "nginx:1.1")
    resync["destination"] = {"server": "", "name": "prod-eu", "namespace": "shop"}
    copy_of_resync = {**resync, "delivery_id": "again"}
    there = _at(11, "b" * 40, "nginx:1.2")
    there["destination"] = resync["destination"]
    decisions = _decided(first, resync, copy_of_resync, there)
    assert [d.outcome for d in decisions] == ["deployed", "resync", "duplicate", "deployed"]
    assert _types(decisions) == [SERVICE_DEPLOYED, None, None, SERVICE_DEPLOYED]
    # the resync's new destination is not counted: the next deployment there is "deployed"
    assert decisions[2].state["environments"] == ["https://k/shop"]
    assert decisions[3].cdevent["subject"]["content"]["environment"] == {"id": "prod-eu/shop"}


def test_a_state_from_before_environments_were_kept_is_seeded_from_its_destination():
    (first,) = _decided(_at(9, "a" * 40, "nginx:1.1"))
    old = {k: v for k, v in first.state.items() if k != "environments"}  # an older worker's
    assert known_environments(old) == ["https://k/shop"]
    (same_place,) = _decided(_at(10, "b" * 40, "nginx:1.2"), state=old)
    assert _types([same_place]) == [SERVICE_UPGRADED]  # the app already ran there
    assert same_place.state["environments"] == ["https://k/shop"]
    elsewhere = _at(10, "b" * 40, "nginx:1.2")
    elsewhere["destination"] = {"server": "https://other", "name": "", "namespace": "shop"}
    (moved,) = _decided(elsewhere, state=old)
    assert _types([moved]) == [SERVICE_DEPLOYED]
    assert moved.state["environments"] == ["https://k/shop", "https://other/shop"]
    # an old state of an app that never succeeded, or whose destination was never known
    (failed,) = _decided(_at(9, "a" * 40, "nginx:1.1", phase="Failed"))
    never = {k: v for k, v in failed.state.items() if k != "environments"}
    assert known_environments(never) == []
    assert _types(_decided(_at(10, "b" * 40, "nginx:1.2"), state=never)) == [SERVICE_DEPLOYED]
    assert known_environments({**old, "destination": None}) == []
    assert known_environments(None) == []


def test_decide_gives_the_cdevents_the_worker_would_for_the_example_payloads():
    entries = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    states: dict[str, Any] = {}
    got = []
    for n, entry in enumerate(entries, 1):
        (decision,) = _decided(_sync_event(entry, n), state=states.get(entry["app"]))
        states[entry["app"]] = decision.state or states.get(entry["app"])
        if decision.cdevent is not None:
            got.append(decision.cdevent)
    assert got == [event for _, event in _fixture_events()]


def _assert_the_purl_is_the_librarys(reference: str) -> None:
    ref = parse_image(reference)
    qualifiers = {"repository_url": ref.repository, **({"tag": ref.tag} if ref.tag else {})}
    name = ref.path.rsplit("/", 1)[-1]
    library = PackageURL(type="oci", name=name, version=ref.digest, qualifiers=qualifiers)
    assert image_purl(reference) == library.to_string()


@settings(max_examples=300)
@given(references())
def test_the_purl_is_the_one_the_packageurl_library_writes(reference: str):
    _assert_the_purl_is_the_librarys(reference)


@pytest.mark.parametrize(
    "reference",
    [
        "app@Sha512+Custom.v2:" + "ABCDEF0123456789" * 2,  # '+', upper case: version lowered
        "[::1]:5000/team/app:1",  # brackets percent-encoded
        "[fe80::1]:443/app@sha256:" + "c" * 64,
        "localhost:5000/a/b_c__d-e.f:V1.0-RC_2",
        "REGISTRY.Example.COM/acme/app:Tag",
    ],
)
def test_odd_references_have_the_purl_the_packageurl_library_writes(reference: str):
    _assert_the_purl_is_the_librarys(reference)
