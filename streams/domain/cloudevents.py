"""CloudEvents 1.0 attributes of every synctrail record, as Kafka binary-mode headers (pure).

In the CloudEvents Kafka binding's *binary* mode the record's value is the event's data, as is,
and every other attribute is a ``ce_<name>`` header (``datacontenttype`` is ``content-type``).
So a consumer that knows CloudEvents reads synctrail's records as events, and one that does not
sees the very same values as before: nothing here touches a value.

:func:`headers` gives the headers of one record from its schema name, the record (``None`` for
a tombstone), its key and the ``source``, in the order
``ce_specversion, ce_id, ce_source, ce_type, ce_time, ce_subject, content-type``:

- ``ce_type`` is one per record schema: ``synctrail.<type>/v<N>`` is ``io.synctrail.<type>.v<N>``
  (:func:`event_type`).
- ``ce_id`` is a UUID version 5 (RFC 9562 name-based, SHA-1) in :data:`ID_NAMESPACE` of the
  compact JSON array ``[ce_type, field, ..., n]``, the fields being the record's identity
  (:data:`IDENTITY`, documented in docs/topics.md), so the same fact written again (a spool
  drained twice, a worker's outputs repeated after a crash, a replay) has the same id and two
  facts never share one. ``n`` tells apart records one fact gives several of with the same
  fields (the policy-check written to every partition passes its partition). A record whose
  identity fields are all missing (say an original sent back by ``replay-dead-letters``) is
  identified by the SHA-256 of its canonical JSON instead.
- ``ce_time`` is when the fact happened, from the record (:data:`IDENTITY` names the field);
  Unix-seconds times are written as RFC 3339. It is left out when the record has none.
- ``ce_subject`` is the record's key (``<app namespace>/<app name>`` for all app records).
- ``content-type`` is ``application/json``; a tombstone (no value) has none, as the binding says
  of an event without data.

:func:`cdevent_headers` gives the headers of a CDEvent on the ``cdevents`` topic, as the
CDEvents CloudEvents binding maps them (its context's id, source, type, timestamp and subject
id; ``content-type: application/cdevents+json``).

Written here rather than with the ``cloudevents`` SDK's Kafka binding (``to_binary``): the SDK
builds an event object, validates and re-encodes each attribute and returns a dict the producer
would turn into aiokafka's list of tuples, for the same seven byte strings, and it derives no
id or time from a record, which is the part that needs thought. ``python -m bench.headers``
measured it (2.2.0, four runs) at 2.4-3.7x our cost per record with its 1.x API
(``cloudevents.v1.kafka``) and 3.5-5.1x with the 2.x one (``cloudevents.core.bindings.kafka``),
ours being 1.9-2.8x an ``orjson.dumps`` of the record (a shared machine at load 11-13: compare
ratios, not microseconds).
The ``ce_id`` is most of our cost, hence :func:`uuid5` instead of ``uuid.uuid5``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.domain import timestamps

Header = tuple[str, bytes]
Identity = tuple[list[Any], Any]

SPECVERSION = "1.0"
JSON_CONTENT_TYPE = "application/json"
CDEVENTS_CONTENT_TYPE = "application/cdevents+json"

#: The namespace of every ``ce_id``: uuid5(NAMESPACE_URL, "https://synctrail.dev/cloudevents"),
#: i.e. ``6bbba8bb-48fd-5883-9ae3-00697bd5e1a9`` (a test pins it: changing it changes every id).
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://synctrail.dev/cloudevents")

_SPECVERSION_HEADER: Header = ("ce_specversion", SPECVERSION.encode())
_JSON_HEADER: Header = ("content-type", JSON_CONTENT_TYPE.encode())
_CDEVENTS_HEADER: Header = ("content-type", CDEVENTS_CONTENT_TYPE.encode())
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


@functools.lru_cache(maxsize=64)
def event_type(schema: str) -> str:
    """``synctrail.deployment/v1`` → ``io.synctrail.deployment.v1``; ``ValueError`` otherwise."""
    name, slash, version = schema.partition("/")
    if not name.startswith("synctrail.") or not slash or not re.fullmatch(r"v[0-9]+", version):
        raise ValueError(f"not a synctrail schema name: {schema!r}")
    return f"io.{name}.{version}"


_NAMESPACE_BYTES = ID_NAMESPACE.bytes
# RFC 9562 variant bits (10xx) set on the hex digit that carries them.
_VARIANT_DIGIT = {f"{i:x}": f"{(i & 0x3) | 0x8:x}" for i in range(16)}


def uuid5(name: bytes) -> str:
    """``str(uuid.uuid5(ID_NAMESPACE, name))`` for a bytes ``name``, without building a ``UUID``
    (several times cheaper; a test checks it against the RFC's construction)."""
    x = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT_DIGIT[x[16]]}{x[17:20]}-{x[20:32]}"


def event_id(type_: str, fields: Sequence[Any], n: int = 0) -> str:
    """The ``ce_id`` of a record of ``type_`` whose identity is ``fields``: a UUID v5 of the
    compact JSON array ``[type_, *fields, n]`` in :data:`ID_NAMESPACE`."""
    return uuid5(orjson.dumps([type_, *fields, n]))


def content_sha256(record: Any) -> str:
    """``sha256:<hex>`` of ``record`` as canonical JSON (sorted keys, compact)."""
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


@functools.lru_cache(maxsize=256)
def unix_to_rfc3339(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds (cached: a batch shares its ``now``)."""
    return timestamps.format_datetime(datetime.fromtimestamp(seconds, UTC))


def is_rfc3339(value: Any) -> bool:
    """Whether ``value`` is an RFC 3339 date-time string."""
    return isinstance(value, str) and _RFC3339.fullmatch(value) is not None


def _unix(value: Any) -> str | None:
    if type(value) is float or type(value) is int:
        return unix_to_rfc3339(float(value))
    return None


def _text_time(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- what identifies each record type, and when it happened --------------------------------------


def _sync_event(r: Mapping[str, Any]) -> Identity:
    return [r.get("delivery_id")], _text_time(r.get("received_at"))


def _deployment(r: Mapping[str, Any]) -> Identity:
    finished = (r.get("operation") or {}).get("finished_at")
    if not is_rfc3339(finished):  # bare bodies: when the bridge received it
        finished = _text_time(r.get("received_at"))
    return [r.get("delivery_id")], finished


def _notification(r: Mapping[str, Any]) -> Identity:
    return [r.get("idempotency_key")], _text_time(r.get("created_at"))


def _metric(r: Mapping[str, Any]) -> Identity:
    fields = [r.get("kind"), r.get("app"), r.get("delivery_id"), r.get("rule"), r.get("image")]
    if r.get("delivery_id") is None:
        fields.append(r.get("timestamp"))  # retroactive and dead-letter facts: their moment
    return fields, _unix(r.get("timestamp"))


def _dora(r: Mapping[str, Any]) -> Identity:
    # a finding is one per (kind, what it is about): a replay's copy gets the same id
    fields = [
        r.get("kind"),
        r.get("app"),
        r.get("deployment"),
        r.get("revision"),
        r.get("episode"),
        r.get("started_at"),
        r.get("health"),
        r.get("at"),
    ]
    return fields, _text_time(r.get("at"))


def _violation(r: Mapping[str, Any]) -> Identity:
    fields = [r.get("app_namespace"), r.get("app"), r.get("rule_id"), r.get("image")]
    if r.get("delivery_id") is None:  # retroactive: the app's revision(s) instead
        fields += ["retroactive", r.get("revision"), r.get("revisions")]
    else:
        fields.append(r.get("delivery_id"))
    return fields, _text_time(r.get("detected_at"))


def _remediation(r: Mapping[str, Any]) -> Identity:
    if r.get("delivery_id") is not None:
        fields = [r.get("delivery_id")]
    else:
        fields = [
            r.get("app_namespace"),
            r.get("app"),
            "retroactive",
            r.get("bad_images"),
            r.get("current_revision"),
            r.get("current_revisions"),
        ]
    return fields, _text_time(r.get("requested_at"))


def _policy_rule(r: Mapping[str, Any]) -> Identity:
    return [content_sha256(r)], _text_time(r.get("created_at"))


def _policy_check(r: Mapping[str, Any]) -> Identity:
    rule = r.get("rule")
    created = rule.get("created_at") if isinstance(rule, Mapping) else None
    return [content_sha256(rule)], _text_time(created)


def _slack_state(r: Mapping[str, Any]) -> Identity:
    return [r.get("key"), r.get("kind"), r.get("at")], _unix(r.get("at"))


def _dead_letter(r: Mapping[str, Any]) -> Identity:
    fields = [
        r.get("component"),
        r.get("source_topic"),
        r.get("source_partition"),
        r.get("source_offset"),
    ]
    return fields, _text_time(r.get("failed_at"))


#: Per record schema: the record's identity fields and its time (see docs/topics.md).
IDENTITY: dict[str, Callable[[Mapping[str, Any]], Identity]] = {
    "synctrail.sync-event/v1": _sync_event,
    "synctrail.policy-check/v1": _policy_check,
    "synctrail.deployment/v1": _deployment,
    "synctrail.notification/v1": _notification,
    "synctrail.metric/v1": _metric,
    "synctrail.dora/v1": _dora,
    "synctrail.violation/v1": _violation,
    "synctrail.remediation/v1": _remediation,
    "synctrail.policy-rule/v1": _policy_rule,
    "synctrail.slack-state/v1": _slack_state,
    "synctrail.dead-letter/v1": _dead_letter,
}


def identity(schema: str, record: Any) -> Identity:
    """``(identity fields, time or None)`` of a record of ``schema``.

    A record that is not an object, of a schema this module does not know, or whose identity
    fields are all missing, is identified by its content's SHA-256 and has no time.
    """
    of = IDENTITY.get(schema)
    # type() first: isinstance against an ABC costs more than the identity itself
    if of is not None and (type(record) is dict or isinstance(record, Mapping)):
        fields, time = of(record)
        if fields.count(None) < len(fields):
            return fields, time
    return [content_sha256(record)], None


def default_source(topic_prefix: str) -> str:
    """The ``ce_source`` when ``SYNCTRAIL_EVENT_SOURCE`` is empty: ``/synctrail/<topic prefix
    without its trailing dot>`` (``/synctrail/synctrail`` by default)."""
    return f"/synctrail/{topic_prefix.rstrip('.')}"


_TYPES: dict[str, tuple[str, bytes]] = {}


def _type_of(schema: str) -> tuple[str, bytes]:
    known = _TYPES.get(schema)
    if known is None:
        type_ = event_type(schema)
        known = _TYPES[schema] = (type_, type_.encode())
    return known


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def headers(
    schema: str,
    record: Mapping[str, Any] | None,
    key: str | bytes | None,
    source: str | bytes,
    *,
    n: int = 0,
    time: str | None = None,
) -> list[Header]:
    """The CloudEvents headers of one record of ``schema`` keyed ``key`` (see the module doc).

    ``record`` ``None`` is a tombstone: identified by its key, ``n`` and ``time`` (when the
    deletion was decided; give it), without ``content-type``. ``time`` also stands in for a
    record that carries no time of its own.
    """
    type_, type_bytes = _type_of(schema)
    if record is None:
        fields: list[Any] = ["tombstone", key.decode() if isinstance(key, bytes) else key, time]
        own_time = None
    else:
        fields, own_time = identity(schema, record)
    out = [
        _SPECVERSION_HEADER,
        ("ce_id", event_id(type_, fields, n).encode()),
        ("ce_source", _bytes(source)),
        ("ce_type", type_bytes),
    ]
    when = own_time or time
    if when is not None:
        out.append(("ce_time", when.encode()))
    if key is not None:
        out.append(("ce_subject", _bytes(key)))
    if record is not None:
        out.append(_JSON_HEADER)
    return out


def cdevent_headers(event: Mapping[str, Any]) -> list[Header]:
    """The CloudEvents headers of a CDEvent (CDEvents' CloudEvents binding; data = the event)."""
    context, subject = event["context"], event["subject"]
    return [
        _SPECVERSION_HEADER,
        ("ce_id", context["id"].encode()),
        ("ce_source", context["source"].encode()),
        ("ce_type", context["type"].encode()),
        ("ce_time", context["timestamp"].encode()),
        ("ce_subject", subject["id"].encode()),
        _CDEVENTS_HEADER,
    ]
