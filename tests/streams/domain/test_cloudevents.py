"""CloudEvents Kafka binary-mode headers of synctrail's records (pure).

The records are real ones: the example payloads decided in delivery order (sync events,
deployments, metrics, violations and a remediation from a deny rule, notifications), plus one
of every other schema.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.bridge.events import bare_event, envelope_event
from streams.domain import cloudevents, schemas
from streams.domain.cloudevents import (
    ID_NAMESPACE,
    IDENTITY,
    cdevent_headers,
    event_id,
    event_type,
    headers,
)
from streams.domain.decide import decide
from streams.domain.notify import NotifyConfig, deployment_notifications
from streams.kafka.topics import ALL_TOPICS, CDEVENTS
from tests.support import REPO

PAYLOADS = REPO / "examples" / "payloads"
SOURCE = "/synctrail/test"
NOW = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
NAMES = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "content-type",
]
DENY_REDIS = {
    "id": "deny:redis",
    "kind": "deny",
    "image": "docker.io/library/redis:*",
    "reason": "no redis",
    "apps": "*",
    "projects": "*",
    "namespaces": "*",
}


def _sync_event(entry: dict[str, Any], n: int) -> dict[str, Any]:
    raw = (PAYLOADS / entry["file"]).read_bytes()
    body = orjson.loads(raw)
    ids = {"delivery_id": f"{n:032x}", "received_at": f"2026-11-28T09:{n:02d}:00.000Z"}
    if entry["shape"] == "envelope":
        return envelope_event(body, raw, default_namespace="argocd", **ids)
    namespace, name = entry["app"].split("/")
    return bare_event(body, raw, namespace=namespace, name=name, **ids)


def _records() -> list[tuple[str, dict[str, Any]]]:
    """(key, record) of everything the examples make the bridge and worker write, in order."""
    entries = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    states: dict[str, Any] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for n, entry in enumerate(entries, 1):
        event = _sync_event(entry, n)
        key = entry["app"]
        out.append((key, event))
        decision = decide(event, states.get(key), [DENY_REDIS], now=NOW)
        if decision.state is not None:
            states[key] = decision.state
        if decision.deployment is not None:
            out.append((key, decision.deployment))
            out += [(key, r) for r in deployment_notifications(decision.deployment, CONFIG, NOW)]
        out += [(key, v) for v in decision.violations]
        if decision.remediation is not None:
            out.append((key, decision.remediation))
        out += [(key, m) for m in decision.metrics]
    return out


CONFIG = NotifyConfig(violations_channel="#security")

OTHERS: list[tuple[str, dict[str, Any]]] = [
    ("deny:redis", {"schema": "synctrail.policy-rule/v1", **DENY_REDIS}),
    ("policy:deny:redis", {"schema": "synctrail.policy-check/v1", "rule": DENY_REDIS}),
    (
        "argocd/guestbook:sha256:x:op",
        {
            "schema": "synctrail.slack-state/v1",
            "kind": "posted",
            "key": "argocd/guestbook:sha256:x:op",
            "ts": "1764324000.000100",
            "at": 1764324000.25,
        },
    ),
    (
        "argocd/guestbook",
        {
            "schema": "synctrail.dead-letter/v1",
            "component": "worker",
            "reason": "not JSON",
            "error_type": "JSONDecodeError",
            "source_topic": "synctrail.sync-events",
            "source_partition": 3,
            "source_offset": 41,
            "key": "argocd/guestbook",
            "original": None,
            "original_text": "nope",
            "failed_at": "2026-11-28T10:00:00.000Z",
        },
    ),
    (
        "argocd/guestbook",
        {
            "schema": "synctrail.dora/v1",
            "kind": "health_transition",
            "app": "argocd/guestbook",
            "project": "default",
            "timestamp": 1764324000.5,
            "delivery_id": "7f3c",
            "at": "2026-11-28T09:58:00.000Z",
            "health": "Degraded",
            "previous_health": "Healthy",
            "deployment": "5a1e",
            "revision": "abc123",
            "seconds": 720.0,
        },
    ),
]


def _all() -> list[tuple[str, dict[str, Any]]]:
    return _records() + OTHERS


def test_every_record_gets_the_seven_headers_in_order_as_utf8_bytes():
    records = _all()
    schemas = {r["schema"] for _, r in records}
    assert schemas == set(IDENTITY), "the examples cover every record type"
    for key, record in records:
        # policy rules and checks carry no time of their own: the publisher gives it
        got = headers(record["schema"], record, key, SOURCE, time="2026-11-28T10:00:00.000Z")
        assert [name for name, _ in got] == NAMES, record["schema"]
        values = dict(got)
        assert all(isinstance(v, bytes) and v for v in values.values())
        assert values["ce_specversion"] == b"1.0"
        assert values["ce_source"] == SOURCE.encode()
        assert values["ce_subject"] == key.encode()
        assert values["content-type"] == b"application/json"
        assert uuid.UUID(values["ce_id"].decode()).version == 5
        time = values["ce_time"].decode()
        assert cloudevents.is_rfc3339(time), (record["schema"], time)
        datetime.fromisoformat(time)


def test_the_type_is_one_per_schema():
    assert event_type("synctrail.deployment/v1") == "io.synctrail.deployment.v1"
    assert event_type("synctrail.sync-event/v1") == "io.synctrail.sync-event.v1"
    # the records' schemas (the inbound bodies, schemas.INBOUND, are not records on a topic)
    titles = [schemas.title_of(name, tp) for name, tp, _ in schemas.REGISTRY]
    types = [event_type(t) for t in titles]
    assert len(set(types)) == len(titles)
    assert set(titles) == set(IDENTITY), "every schema has a documented identity"
    # every topic but cdevents, whose records are CDEvents with headers of their own
    assert {t.schema for t in ALL_TOPICS if t is not CDEVENTS} <= set(IDENTITY)
    for bad in ("deployment/v1", "other.deployment/v1", "synctrail.deployment/1", "synctrail.x"):
        with pytest.raises(ValueError, match="not a synctrail schema name"):
            event_type(bad)


def test_ids_are_unique_across_every_record_and_stable_across_a_replay():
    first = [headers(r["schema"], r, k, SOURCE) for k, r in _all()]
    replayed = [headers(r["schema"], copy.deepcopy(r), k, SOURCE) for k, r in _all()]
    ids = [dict(h)["ce_id"] for h in first]
    assert ids == [dict(h)["ce_id"] for h in replayed]
    assert len(ids) > 50
    # unique: even a deployment's two notifications (its channel and the violations channel)
    # are two facts, with two idempotency keys
    assert len(set(ids)) == len(ids)
    copies = [r for _, r in _records() if r["schema"] == "synctrail.notification/v1"]
    assert {r["channel"] for r in copies} == {"#deployments", "#security"}


def test_the_id_is_the_documented_uuid5():
    assert str(ID_NAMESPACE) == "6bbba8bb-48fd-5883-9ae3-00697bd5e1a9"
    record = {"schema": "synctrail.deployment/v1", "delivery_id": "ab" * 16}
    expected = uuid.uuid5(ID_NAMESPACE, '["io.synctrail.deployment.v1","' + "ab" * 16 + '",0]')
    assert dict(headers(record["schema"], record, "a/b", SOURCE))["ce_id"] == str(expected).encode()
    assert event_id("io.synctrail.deployment.v1", ["ab" * 16]) == str(expected)


@given(st.binary(max_size=300))
def test_the_fast_uuid5_is_the_standard_one(name: bytes):
    assert cloudevents.uuid5(name) == str(uuid.UUID(bytes=_sha1_uuid(name)))


def _sha1_uuid(name: bytes) -> bytes:
    """RFC 9562's UUID v5 bytes, spelt out (uuid.uuid5 only takes text names)."""
    digest = bytearray(hashlib.sha1(ID_NAMESPACE.bytes + name).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return bytes(digest)


def test_the_fast_uuid5_matches_the_standard_library_on_text_names():
    for name in ("", "a", '["io.synctrail.deployment.v1","x",0]', "é数据"):
        assert cloudevents.uuid5(name.encode()) == str(uuid.uuid5(ID_NAMESPACE, name))


def test_the_same_fact_written_twice_has_one_id_and_n_tells_copies_apart():
    sync_event = _records()[0][1]
    twice = {**sync_event, "received_at": sync_event["received_at"]}
    assert (
        dict(headers(twice["schema"], twice, "k", SOURCE))["ce_id"]
        == dict(headers(sync_event["schema"], sync_event, "k", SOURCE))["ce_id"]
    )
    check = OTHERS[1][1]
    per_partition = {
        dict(headers(check["schema"], check, "p", SOURCE, n=p))["ce_id"] for p in range(8)
    }
    assert len(per_partition) == 8
    # the id does not depend on the source or key, only on the fact
    assert (
        dict(headers(check["schema"], check, "q", "/other"))["ce_id"]
        == dict(headers(check["schema"], check, "p", SOURCE))["ce_id"]
    )


def test_the_time_is_when_the_fact_happened():
    deployment = next(r for _, r in _records() if r["schema"] == "synctrail.deployment/v1")
    assert dict(headers(deployment["schema"], deployment, "k", SOURCE))["ce_time"] == (
        deployment["operation"]["finished_at"].encode()
    )
    bare = {**deployment, "operation": {**deployment["operation"], "finished_at": None}}
    assert dict(headers(bare["schema"], bare, "k", SOURCE))["ce_time"] == (
        deployment["received_at"].encode()
    )
    metric = {
        "schema": "synctrail.metric/v1",
        "kind": "dead_letter",
        "app": "a/b",
        "timestamp": 1764324000.25,
    }
    assert dict(headers(metric["schema"], metric, "a/b", SOURCE))["ce_time"] == (
        b"2025-11-28T10:00:00.250Z"
    )
    rule = {"schema": "synctrail.policy-rule/v1", **DENY_REDIS}  # no created_at: no ce_time
    assert "ce_time" not in dict(headers(rule["schema"], rule, "deny:redis", SOURCE))


def test_a_tombstone_has_no_content_type_and_an_id_from_its_key_and_time():
    got = headers(
        "synctrail.policy-rule/v1", None, b"deny:redis", SOURCE, time="2026-11-28T10:00:00.000Z"
    )
    assert [name for name, _ in got] == NAMES[:-1]
    other = headers(
        "synctrail.policy-rule/v1", None, b"deny:nginx", SOURCE, time="2026-11-28T10:00:00.000Z"
    )
    later = headers(
        "synctrail.policy-rule/v1", None, b"deny:redis", SOURCE, time="2026-11-28T11:00:00.000Z"
    )
    assert len({dict(h)["ce_id"] for h in (got, other, later)}) == 3


def test_a_record_without_its_identity_fields_is_identified_by_its_content():
    original = {"schema": "synctrail.sync-event/v1", "app": {"name": "x"}}  # a dead letter's
    a = dict(headers(original["schema"], original, "x", SOURCE))
    b = dict(headers(original["schema"], {**original, "app": {"name": "y"}}, "x", SOURCE))
    assert a["ce_id"] != b["ce_id"]
    assert "ce_time" not in a


def test_a_cdevent_carries_its_own_context_as_headers():
    event = {
        "context": {
            "specversion": "0.5.1",
            "id": "6e1f3a4c-0000-5000-8000-000000000000",
            "source": SOURCE,
            "type": "dev.cdevents.service.deployed.0.3.0",
            "timestamp": "2026-11-28T10:00:00Z",
        },
        "subject": {"id": "argocd/guestbook", "content": {}},
    }
    assert cdevent_headers(event) == [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"6e1f3a4c-0000-5000-8000-000000000000"),
        ("ce_source", SOURCE.encode()),
        ("ce_type", b"dev.cdevents.service.deployed.0.3.0"),
        ("ce_time", b"2026-11-28T10:00:00Z"),
        ("ce_subject", b"argocd/guestbook"),
        ("content-type", b"application/cdevents+json"),
    ]
