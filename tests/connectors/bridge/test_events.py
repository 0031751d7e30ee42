"""Records built from the fixtures match the sync-event contract (no broker)."""

from __future__ import annotations

import hashlib
import re

import msgspec
import orjson
import pytest

from connectors.bridge.events import bare_event, envelope_event, event_key
from streams.domain import timestamps
from streams.domain.records import SyncEvent, dumps
from tests.connectors.bridge.helpers import valid_fixtures
from tests.contracts import validate_record
from tests.support import REPO

FIELDS = {"schema", *(f.encode_name for f in msgspec.structs.fields(SyncEvent))}


def build(entry: dict) -> dict:
    body = orjson.loads(entry["raw"])
    if entry["shape"] == "envelope":
        return envelope_event(
            body,
            entry["raw"],
            default_namespace="argocd",
            delivery_id="d" * 32,
            received_at=timestamps.now(),
        )
    namespace, name = entry["requestPath"].split("/")[-2:]
    return bare_event(
        body,
        entry["raw"],
        namespace=namespace,
        name=name,
        delivery_id="d" * 32,
        received_at=timestamps.now(),
    )


@pytest.mark.parametrize("entry", valid_fixtures(), ids=lambda e: e["file"])
def test_record_has_exactly_the_contract_fields_and_matches_the_schema(entry: dict) -> None:
    event = build(entry)
    assert set(event) == FIELDS
    validate_record(orjson.loads(orjson.dumps(event)))
    raw = orjson.dumps(event)
    assert dumps(msgspec.json.decode(raw, type=SyncEvent)) == raw  # same bytes, field order too
    assert event_key(event) == entry["app"]
    assert event["body_sha256"] == hashlib.sha256(entry["raw"]).hexdigest()
    body = orjson.loads(entry["raw"])
    sync_result = body["syncResult"] if entry["shape"] == "envelope" else body
    assert event["sync_result"] == sync_result
    assert event["revision"] == sync_result.get("revision", "")
    assert event["revisions"] == sync_result.get("revisions", [])


def test_envelope_fields_are_mapped_to_snake_case() -> None:
    entry = next(e for e in valid_fixtures() if e["file"].startswith("13-"))
    event = build(entry)
    assert event["app"] == {
        "name": "guestbook",
        "namespace": "argocd",
        "project": "default",
        "uid": "5c6f0708-b0c4-55f1-ac55-27dee1919c87",
    }
    assert event["destination"] == {
        "server": "https://kubernetes.default.svc",
        "name": "",
        "namespace": "guestbook",
    }
    assert event["operation"]["phase"] == "Failed"
    assert event["operation"]["started_at"] == "2026-07-11T12:45:10Z"
    assert event["operation"]["finished_at"] == "2026-07-11T12:48:03Z"
    assert event["operation"]["initiated_by"] == {"automated": True}
    assert event["operation"]["retry_count"] == 5
    assert event["health"] == "Healthy" and event["sync_status"] == "OutOfSync"


def test_bare_record_has_no_envelope_metadata() -> None:
    entry = next(e for e in valid_fixtures() if e["shape"] == "bare")
    event = build(entry)
    assert event["shape"] == "bare"
    assert event["app"]["project"] is None and event["app"]["uid"] is None
    assert event["operation"] is None and event["destination"] is None


def test_received_at_is_rfc3339_utc_with_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamps.now())


def test_delivery_ids_are_uuid4_hex_and_unique() -> None:
    import uuid

    from connectors.bridge.events import new_delivery_id

    ids = [new_delivery_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:200]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


HEALTH_EXAMPLES = REPO / "examples" / "payloads" / "health"


def test_an_envelope_with_observed_at_and_commit_gives_them_to_the_record() -> None:
    raw = (HEALTH_EXAMPLES / "02-guestbook-rev-d-degraded.json").read_bytes()
    event = build({"raw": raw, "shape": "envelope"})
    assert set(event) == FIELDS
    validate_record(orjson.loads(orjson.dumps(event)))
    assert event["health"] == "Degraded"
    assert event["observed_at"] == "2026-07-10T11:42:51.604Z"
    assert event["commit"] == {
        "revision": "2c1f426be077299e6697edfbd9e6160fbab844de",
        "date": "2026-07-10T11:21:37Z",
        "author": "Ana Lima <ana.lima@acme.example>",
        "message": "guestbook-ui v1.5.0: drop the redis sidecar\n\n"
        "The session store moved to the shared cache.",
    }
    decoded = msgspec.json.decode(orjson.dumps(event), type=SyncEvent)
    assert decoded.commit is not None and decoded.commit.date == "2026-07-10T11:21:37Z"


def test_a_commit_without_author_and_message_has_them_null() -> None:
    body = orjson.loads((HEALTH_EXAMPLES / "01-guestbook-rev-d-commit.json").read_bytes())
    body["commit"] = {"revision": "abc", "date": "2026-07-10T11:21:37Z"}
    raw = orjson.dumps(body)
    event = build({"raw": raw, "shape": "envelope"})
    assert event["commit"] == {
        "revision": "abc",
        "date": "2026-07-10T11:21:37Z",
        "author": None,
        "message": None,
    }
    validate_record(orjson.loads(orjson.dumps(event)))


@pytest.mark.parametrize("entry", valid_fixtures(), ids=lambda e: e["file"])
def test_bodies_without_observed_at_and_commit_give_nulls(entry: dict) -> None:
    # none of the shared fixtures has them; bare bodies never can
    event = build(entry)
    assert event["observed_at"] is None and event["commit"] is None


def test_a_sync_event_written_before_observed_at_and_commit_still_decodes() -> None:
    entry = next(e for e in valid_fixtures() if e["shape"] == "envelope")
    old = build(entry)
    del old["observed_at"], old["commit"]
    decoded = msgspec.json.decode(orjson.dumps(old), type=SyncEvent)
    assert decoded.observed_at is None and decoded.commit is None
