"""Body validation: every fixture, precise field paths, Kubernetes names (no broker)."""

from __future__ import annotations

import copy
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.bridge.validation import (
    Rejection,
    check_bare,
    check_envelope,
    check_route_identity,
    name_problem,
    namespace_problem,
    parse_json_object,
)
from tests.connectors.bridge.helpers import fixture_bytes, valid_fixtures


@pytest.mark.parametrize("entry", valid_fixtures(), ids=lambda e: e["file"])
def test_every_valid_fixture_passes_for_its_shape(entry: dict) -> None:
    body = parse_json_object(entry["raw"])
    if entry["shape"] == "envelope":
        check_envelope(body)
    else:
        check_bare(body)


def _reject(check, body) -> Rejection:
    with pytest.raises(Rejection) as info:
        check(body)
    return info.value


def test_truncated_body_is_a_json_error_with_its_position() -> None:
    rej = _reject(parse_json_object, fixture_bytes("invalid-truncated-syncresult.json"))
    assert rej.status == 400
    assert "not valid JSON" in rej.message and "char" in rej.message


def test_plain_text_body_says_the_template_lacks_a_webhook_body() -> None:
    rej = _reject(parse_json_object, fixture_bytes("invalid-plain-text-message-body.txt"))
    assert rej.status == 400
    assert "webhook" in rej.message and "message" in rej.message


def test_non_object_json_is_refused() -> None:
    rej = _reject(parse_json_object, b"[1, 2]")
    assert rej.status == 400 and rej.message == "body: expected a JSON object, got list"


def test_invalid_utf8_is_refused() -> None:
    rej = _reject(parse_json_object, b'{"revision": "\xff\xfe"}')
    assert rej.status == 400 and "not valid JSON" in rej.message


def test_resources_as_an_object_is_named() -> None:
    body = parse_json_object(fixture_bytes("invalid-resources-not-a-list.json"))
    rej = _reject(check_bare, body)
    assert rej.status == 400
    assert rej.problems == ["resources: expected a list of resource objects, got object"]


def test_wrong_types_in_an_envelope_are_all_named_by_path() -> None:
    body = parse_json_object(fixture_bytes("invalid-wrong-types.json"))
    rej = _reject(check_envelope, body)
    assert rej.status == 400
    assert set(rej.problems) == {
        "operation.phase: expected a string, got list",
        "revision: expected a string, got number",
        "syncResult.revision: expected a string, got null",
        "syncResult.resources[0].images: expected a list of strings, got string",
        "syncResult.resources[0].name: expected a string, got list",
        "syncResult.resources[0].status: expected a string, got boolean",
        "syncResult.resources[0].version: expected a string, got number",
    }


def test_the_index_of_the_bad_resource_is_in_the_path() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))["syncResult"]
    body["resources"][3]["images"] = ["ok", 7]
    rej = _reject(check_bare, body)
    assert rej.problems == ["resources[3].images: expected a list of strings, got list"]


def test_a_missing_resource_field_is_named() -> None:
    body = orjson.loads(fixture_bytes("02-payments-api-rev-a.json"))
    del body["resources"][1]["kind"]
    rej = _reject(check_bare, body)
    assert rej.problems == ["resources[1].kind: required field is missing (expected a string)"]


def test_bare_sync_result_on_the_envelope_route_is_422_with_the_template_fix() -> None:
    body = parse_json_object(fixture_bytes("02-payments-api-rev-a.json"))
    rej = _reject(check_envelope, body)
    assert rej.status == 422
    assert "path: /v1/sync/{{.app.metadata.namespace}}/{{.app.metadata.name}}" in rej.message


def test_envelope_without_app_is_400_naming_app() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    del body["app"]
    rej = _reject(check_envelope, body)
    assert rej.status == 400
    assert "app: required field is missing (expected an object)" in rej.problems


def test_envelope_posted_to_a_bare_route_is_refused() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    rej = _reject(check_bare, body)
    assert rej.status == 400 and "/v1/sync" in rej.message


def test_unknown_fields_are_accepted_everywhere() -> None:
    body = orjson.loads(fixture_bytes("07-guestbook-rev-c.json"))
    body["newTopLevel"] = {"x": 1}
    body["app"]["labels"] = {"team": "web"}
    body["operation"]["sync"] = {"prune": True}
    body["syncResult"]["resources"][0]["newField"] = [1, 2]
    body["syncResult"]["futureThing"] = "yes"
    check_envelope(copy.deepcopy(body))


def test_envelope_app_names_must_be_kubernetes_names() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    body["app"]["name"] = "Guest Book"
    body["app"]["namespace"] = "argo/cd"
    rej = _reject(check_envelope, body)
    assert rej.status == 400
    assert any(
        p.startswith("app.name: 'Guest Book' is not a valid Kubernetes name") for p in rej.problems
    )
    assert any(p.startswith("app.namespace: 'argo/cd' is not a valid") for p in rej.problems)


def test_route_identity_is_checked_against_kubernetes_rules() -> None:
    check_route_identity("argocd", "guestbook.v2")
    rej = _reject(lambda _: check_route_identity("Argo_CD", "-bad"), None)
    assert rej.status == 400
    assert len(rej.problems) == 2
    assert rej.problems[0].startswith("path {app_namespace}:")
    assert rej.problems[1].startswith("path {app}:")


def test_unsupported_schema_version_is_named() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    body["schemaVersion"] = 2
    rej = _reject(check_envelope, body)
    assert rej.problems == ["schemaVersion: unsupported version 2 (this bridge reads 1)"]


def test_retry_count_must_be_an_integer_not_a_boolean() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    body["operation"]["retryCount"] = True
    rej = _reject(check_envelope, body)
    assert rej.problems == ["operation.retryCount: expected an integer, got boolean"]


@pytest.mark.parametrize("value", ["argocd", "a", "team-b", "x" * 63, "0abc9"])
def test_valid_namespaces(value: str) -> None:
    assert namespace_problem(value) is None


@pytest.mark.parametrize("value", ["", "Argocd", "-a", "a-", "a.b", "a/b", "x" * 64, "ä"])
def test_invalid_namespaces(value: str) -> None:
    assert namespace_problem(value) is not None


@pytest.mark.parametrize("value", ["guestbook", "a.b-c.d", "x" * 253])
def test_valid_names(value: str) -> None:
    assert name_problem(value) is None


@pytest.mark.parametrize("value", ["", "a..b", ".a", "a.", "A", "a b", "a/b", "x" * 254])
def test_invalid_names(value: str) -> None:
    assert name_problem(value) is not None


@given(st.text(max_size=80))
def test_a_name_that_passes_can_never_break_the_key(value: str) -> None:
    # Whatever passes becomes half of `<ns>/<name>`: it must be plain lower-case ASCII.
    if name_problem(value) is None:
        assert "/" not in value and value == value.strip().lower() and value.isascii()
    if namespace_problem(value) is None:
        assert "/" not in value and "." not in value and len(value) <= 63


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_value_is_either_accepted_or_rejected_cleanly(value: object) -> None:
    body = {"resources": value, "revision": "x"}
    try:
        check_bare(body)
    except Rejection as rej:
        assert rej.status == 400 and rej.problems


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
_ENVELOPE_PATHS = [
    ("schemaVersion",), ("app",), ("app", "name"), ("app", "namespace"), ("app", "project"),
    ("app", "uid"), ("destination",), ("destination", "server"), ("operation",),
    ("operation", "phase"), ("operation", "startedAt"), ("operation", "message"),
    ("operation", "finishedAt"), ("operation", "initiatedBy"), ("operation", "retryCount"),
    ("health",), ("syncStatus",), ("revision",), ("revisions",), ("syncResult",),
    ("syncResult", "resources"), ("syncResult", "revision"), ("syncResult", "revisions"),
    ("syncResult", "source"), ("syncResult", "sources"), ("syncResult", "resources", 0, "images"),
    ("syncResult", "resources", 0, "kind"), ("syncResult", "resources", 0, "status"),
    ("syncResult", "resources", 2), ("observedAt",), ("commit",), ("commit", "revision"),
    ("commit", "date"), ("commit", "author"), ("commit", "message"),
]  # fmt: skip
# a fixture with the optional observedAt and commit, so that the edits reach them too
_BASE = orjson.loads(fixture_bytes("07-guestbook-rev-c.json")) | {
    "observedAt": "2026-07-09T10:00:01.250Z",
    "commit": {"revision": "c0ffee", "date": "2026-07-09T09:58:00Z", "author": "a", "message": "m"},
}


def _edited(base: dict, edits: list) -> dict:
    """``base`` with each (path, value) edit applied; ``KeyError`` as a value removes the key."""
    body = copy.deepcopy(base)
    for path, value in edits:
        target = body
        try:
            for step in path[:-1]:
                target = target[step]
            if value is KeyError:
                target.pop(path[-1], None) if isinstance(target, dict) else None
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return body


@given(st.lists(st.tuples(st.sampled_from(_ENVELOPE_PATHS), _json | st.just(KeyError)), max_size=3))
def test_the_fast_path_never_accepts_what_the_thorough_check_rejects(edits) -> None:
    import msgspec

    from connectors.bridge.validation import envelope_problems
    from streams.domain.inbound import Envelope

    body = _edited(_BASE, edits)
    try:
        msgspec.convert(body, Envelope)  # the fast path check_envelope takes
    except msgspec.ValidationError:
        pass
    else:
        assert envelope_problems(body) == []
    if not envelope_problems(body):
        check_envelope(body)  # accepted either way


_BARE_BASE = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))["syncResult"]
_BARE_PATHS = [
    ("resources",), ("revision",), ("revisions",), ("source",), ("sources",),
    ("managedNamespaceMetadata",), ("resources", 0, "images"), ("resources", 0, "kind"),
    ("resources", 1, "status"), ("resources", 2), ("app",), ("syncResult",), ("schemaVersion",),
]  # fmt: skip


def _accepted(check, body: dict) -> bool:
    try:
        check(body)
    except Rejection:
        return False
    return True


@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_BARE_PATHS), _json | st.just(KeyError)), max_size=3))
def test_a_bare_body_is_refused_exactly_when_a_problem_is_named(edits) -> None:
    from connectors.bridge.validation import sync_result_problems

    body = _edited(_BARE_BASE, edits)
    if _accepted(check_bare, body):
        assert sync_result_problems(body) == []
    elif sync_result_problems(body) == []:  # only the envelope-on-a-bare-route rule is left
        assert "syncResult" in body and ("app" in body or "schemaVersion" in body)


def _strict_validator(schema: dict):
    """A validator whose integers are JSON's integers without a fraction part.

    JSON Schema counts 1.0 as an integer; the bridge, like any typed JSON reader, does not. That
    is the one place the generated schemas say less than the types.
    """
    from jsonschema import Draft202012Validator, validators

    from tests.contracts import schema_registry

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
    )
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    return strict(schema, registry=schema_registry())


def _inbound_schemas() -> dict:
    """The generated schema files of the inbound bodies (schemas/, from streams.domain.inbound)."""
    from streams.domain.inbound import SCHEMA_TYPES
    from tests.support import REPO

    return {
        name: _strict_validator(json.loads((REPO / "schemas" / name).read_text()))
        for name, _, _ in SCHEMA_TYPES
    }


_SCHEMAS = _inbound_schemas()


@settings(deadline=None)  # a shared machine: the first example compiles the schema's patterns
@given(st.lists(st.tuples(st.sampled_from(_ENVELOPE_PATHS), _json | st.just(KeyError)), max_size=3))
def test_the_envelope_schema_accepts_exactly_what_the_bridge_accepts(edits) -> None:
    body = _edited(_BASE, edits)
    assert _SCHEMAS["envelope.v1.json"].is_valid(body) == _accepted(check_envelope, body)


@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_BARE_PATHS), _json | st.just(KeyError)), max_size=3))
def test_the_sync_result_schema_accepts_exactly_what_the_bridge_accepts(edits) -> None:
    body = _edited(_BARE_BASE, edits)
    assert _SCHEMAS["sync-result.v1.json"].is_valid(body) == _accepted(check_bare, body)


def test_a_name_with_a_trailing_newline_is_refused_naming_the_field() -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    body["app"]["name"] = "guestbook\n"
    rej = _reject(check_envelope, body)
    assert rej.status == 400
    assert rej.problems == [
        "app.name: 'guestbook\\n' is not a valid Kubernetes name (lower-case letters, digits, "
        "'-' and '.', starting and ending with a letter or digit)"
    ]
    rej = _reject(lambda _: check_route_identity("argocd\n", "guestbook"), None)
    assert rej.problems[0].startswith("path {app_namespace}: 'argocd\\n' is not a valid")


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_a_schema_version_that_only_looks_like_1_is_unsupported(version) -> None:
    body = orjson.loads(fixture_bytes("03-guestbook-rev-b.json"))
    body["schemaVersion"] = version
    rej = _reject(check_envelope, body)
    assert rej.problems == [f"schemaVersion: unsupported version {version!r} (this bridge reads 1)"]


def test_problems_stop_at_twenty() -> None:
    body = orjson.loads(fixture_bytes("14-tenant-configs-300-resources.json"))
    for resource in body["resources"]:
        resource["kind"] = 1
    rej = _reject(check_bare, body)
    assert len(body["resources"]) > 20 and len(rej.problems) == 20
    assert rej.problems[19] == "resources[19].kind: expected a string, got number"


def test_a_refusal_the_walk_cannot_name_still_refuses_with_msgspecs_message() -> None:
    from connectors.bridge.validation import _msgspec_problem

    assert _msgspec_problem("Expected `str`, got `int` - at `$.app.name`") == (
        "app.name: Expected `str`, got `int`"
    )
    assert _msgspec_problem("Object missing required field `app`") == (
        "body: Object missing required field `app`"
    )


# --- observedAt and commit (optional, added within v1) ---------------------------------------


def _with_health_fields(**changes: object) -> dict:
    body = orjson.loads(fixture_bytes("10-guestbook-rev-d.json"))
    body["observedAt"] = "2026-07-10T11:42:51.604Z"
    body["commit"] = {
        "revision": body["revision"],
        "date": "2026-07-10T11:21:37+02:00",
        "author": "Ana Lima <ana.lima@acme.example>",
        "message": "guestbook-ui v1.5.0",
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = body
        for step in parents:
            target = target[step]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return body


def test_an_envelope_with_observed_at_and_commit_passes_and_without_them_too() -> None:
    check_envelope(_with_health_fields())
    check_envelope(_with_health_fields(observedAt=KeyError, commit=KeyError))
    check_envelope(_with_health_fields(commit__author=KeyError, commit__message=KeyError))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"observedAt": "2026-07-10 11:42:51Z"}, "observedAt: '2026-07-10 11:42:51Z' is not an RFC 3339"),
        ({"observedAt": "2026-07-10T11:42:51"}, "observedAt: '2026-07-10T11:42:51' is not an RFC 3339"),
        ({"observedAt": "2026-07-10"}, "observedAt: '2026-07-10' is not an RFC 3339"),
        ({"observedAt": "2026-02-30T11:42:51Z"}, "observedAt: '2026-02-30T11:42:51Z' is not an RFC 3339"),
        ({"observedAt": 1783683771}, "observedAt: expected a string, got number"),
        ({"commit__date": "yesterday"}, "commit.date: 'yesterday' is not an RFC 3339"),
        ({"commit__date": "2025-02-29T00:00:00Z"}, "commit.date: '2025-02-29T00:00:00Z' is not an RFC 3339"),
        ({"commit__date": KeyError}, "commit.date: required field is missing (expected a string)"),
        ({"commit__revision": None}, "commit.revision: expected a string, got null"),
        ({"commit": "2c1f426"}, "commit: expected a commit object, got string"),
    ],
)  # fmt: skip
def test_a_bad_observed_at_or_commit_is_refused_naming_the_field(changes, problem) -> None:
    rej = _reject(check_envelope, _with_health_fields(**changes))
    assert rej.status == 400
    assert len(rej.problems) == 1 and rej.problems[0].startswith(problem), rej.problems


@pytest.mark.parametrize(
    "value",
    ["2026-07-10T11:42:51Z", "2026-07-10T11:42:51.604Z", "2026-07-10T11:42:51.123456789-07:00",
     "2024-02-29T23:59:59+14:00"],
)  # fmt: skip
def test_rfc3339_timestamps_as_go_writes_them_pass(value: str) -> None:
    check_envelope(_with_health_fields(observedAt=value, commit__date=value))
