"""One typed definition per outbound record: msgspec Structs, the wire contracts.

Each record is a tagged Struct: its ``schema`` field (``synctrail.<type>/v1``) is the tag, written
first and checked on decode, so ``msgspec.json.decode(raw, type=Notification)`` refuses another
record type with an error naming ``$.schema``. ``schemas/*.json`` are generated from these types
(``python -m streams.domain.schemas``; a test checks the files are current): the ``Meta``
descriptions, patterns and bounds and the ``Literal`` enums below are what the schema files say.

The rules that keep the JSON on the wire what it has always been:

* A field without a default is *required* in the schema and always written, ``None`` as
  ``null``. A field with a default is optional in the schema (added later within v1, or
  optional from the start); the producers still write every field, so no Struct here uses
  ``omit_defaults``.
* Decoding ignores unknown fields (read records tolerantly, docs/topics.md "Versioning"); the
  schema files are closed (``additionalProperties: false``) so the tests catch a field the code
  writes without documenting it.
* The worker builds its records as plain dicts on its hot path (measured: see the tests that
  decode every built record with its type); :func:`dumps` writes dicts and Structs alike with
  orjson, so a Struct's bytes are those of the equal dict.

Nested objects are Structs where their shape is fixed (operation, destination, the deployment's
lists of changes); what Argo CD sends as it is (``sync_result``, ``source``, ``initiated_by``)
and Slack's Block Kit blocks stay JSON objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta

SYNC_EVENT_V1 = "synctrail.sync-event/v1"
POLICY_CHECK_V1 = "synctrail.policy-check/v1"
DEPLOYMENT_V1 = "synctrail.deployment/v1"
NOTIFICATION_V1 = "synctrail.notification/v1"
METRIC_V1 = "synctrail.metric/v1"
DORA_V1 = "synctrail.dora/v1"
VIOLATION_V1 = "synctrail.violation/v1"
REMEDIATION_V1 = "synctrail.remediation/v1"
POLICY_RULE_V1 = "synctrail.policy-rule/v1"
DEAD_LETTER_V1 = "synctrail.dead-letter/v1"
SLACK_STATE_V1 = "synctrail.slack-state/v1"

#: A JSON object whose shape synctrail does not fix (Argo CD's, Slack's), as decoded.
JsonObject = dict[str, Any]

#: RFC 3339 UTC with ``Z`` (synctrail writes milliseconds).
Timestamp = Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")]
NonEmpty = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0)]
RuleName = Literal["denylist", "unexpected"]


class Record(msgspec.Struct, kw_only=True, tag_field="schema"):
    """Base of every record on a topic: tagged by its ``schema`` version string."""


class Part(msgspec.Struct, kw_only=True):
    """Base of the fixed objects nested in records."""


# --- sync-events -------------------------------------------------------------------------------


class SyncEventApp(Part, kw_only=True):
    name: NonEmpty
    namespace: NonEmpty
    project: str | None
    uid: str | None


class Destination(Part, kw_only=True):
    server: str = ""
    name: str = ""
    namespace: str = ""


class Operation(Part, kw_only=True):
    phase: str
    message: str | None
    started_at: str | None
    finished_at: str | None
    initiated_by: JsonObject | None
    retry_count: Count


class SyncEventCommit(Part, kw_only=True):
    revision: str
    date: Annotated[str, Meta(description="RFC 3339, as the envelope had it (the commit's time).")]
    author: str | None = None
    message: Annotated[str | None, Meta(description="Truncated by the template.")] = None


class SyncEvent(Record, kw_only=True, tag=SYNC_EVENT_V1):
    """``<prefix>sync-events``: one accepted webhook delivery, as the bridge received it."""

    delivery_id: NonEmpty
    received_at: Timestamp
    shape: Literal["envelope", "bare"]
    app: SyncEventApp
    destination: Destination | None
    operation: Operation | None
    health: str | None
    sync_status: str | None
    revision: str
    revisions: list[str]
    sync_result: Annotated[
        JsonObject | None, Meta(description="Argo CD's syncResult exactly as received.")
    ]
    body_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    observed_at: Annotated[
        str | None,
        Meta(
            description=(
                "The envelope's observedAt (RFC 3339 as received): when Argo CD rendered the "
                "notification; null when the body had none (bare bodies always)."
            )
        ),
    ] = None
    commit: Annotated[
        SyncEventCommit | None,
        Meta(
            description="The envelope's commit; null when the body had none (bare bodies always)."
        ),
    ] = None


class PolicyRule(Record, kw_only=True, tag=POLICY_RULE_V1):
    """``<prefix>policy`` (compacted, keyed by rule id): one deny or allow rule."""

    id: NonEmpty
    kind: Literal["deny", "allow"]
    reason: str
    image: Annotated[
        str | None, Meta(description="deny: exact reference, repository:tag glob, or digest")
    ] = None
    patterns: Annotated[
        list[str] | None, Meta(description="allow: registry or repository globs")
    ] = None
    apps: str = "*"
    projects: str = "*"
    namespaces: str = "*"
    created_at: str | None = None


class PolicyCheck(Record, kw_only=True, tag=POLICY_CHECK_V1):
    """A control record on every sync-events partition: re-check the apps against ``rule``."""

    rule: PolicyRule


# --- deployments -------------------------------------------------------------------------------


class DeploymentOperation(Operation, kw_only=True):
    phase: Literal["Succeeded", "Failed", "Error"]


class ImageChange(Part, kw_only=True):
    repository: str
    from_: str = msgspec.field(name="from")
    to: str


class ResourceChange(Part, kw_only=True):
    group: str
    version: str
    kind: str
    namespace: str
    name: str
    change: Literal[
        "created",
        "configured",
        "replaced",
        "pruned",
        "prune_skipped",
        "sync_failed",
        "change_unknown",
    ]
    message: str | None


class FailedResource(Part, kw_only=True):
    group: str
    version: str
    kind: str
    namespace: str
    name: str
    message: str | None
    hook_type: str | None
    images: list[str]


class FoundViolation(Part, kw_only=True):
    rule: RuleName
    rule_id: str
    image: str
    reason: str


class InvalidImage(Part, kw_only=True):
    resource: str
    image: str
    error: str


class Deployment(Record, kw_only=True, tag=DEPLOYMENT_V1):
    """``<prefix>deployments``: one announced operation of one app."""

    app: str
    app_namespace: str
    project: str | None
    destination: Destination | None
    revision: str
    revisions: list[str]
    previous_revision: str | None
    previous_revisions: list[str]
    operation: DeploymentOperation
    health: str | None
    initial: bool
    rollback: Annotated[
        bool,
        Meta(
            description="The revision(s) equal an earlier successful deploy's other than the "
            "previous one."
        ),
    ] = False
    fingerprint: Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    images: list[str]
    images_added: list[str]
    images_removed: list[str]
    images_changed: list[ImageChange]
    hook_images: list[str]
    resources_changed: list[ResourceChange]
    resources_unchanged: Count
    failed_resources: list[FailedResource]
    violations: list[FoundViolation]
    invalid_images: Annotated[
        list[InvalidImage],
        Meta(description="Listed image references that do not parse; left out of images."),
    ] = []
    source: Annotated[
        JsonObject | None,
        Meta(
            description="syncResult.source as Argo CD sent it (repoURL, path, targetRevision, "
            "chart)."
        ),
    ] = None
    sources: Annotated[
        list[JsonObject], Meta(description="syncResult.sources for multi-source apps.")
    ] = []
    received_at: Timestamp
    delivery_id: str


# --- violations, remediations, notifications, metrics -----------------------------------------


class Violation(Record, kw_only=True, tag=VIOLATION_V1):
    """``<prefix>violations``: one image that breaks one policy rule."""

    app: str
    app_namespace: str
    project: str | None
    image: str
    rule: RuleName
    rule_id: str
    reason: str
    detected: Literal["deploy", "retroactive"]
    revision: str | None
    revisions: list[str]
    delivery_id: str | None
    detected_at: Timestamp


class Remediation(Record, kw_only=True, tag=REMEDIATION_V1):
    """``<prefix>remediations``: a rollback request for an app running a denylisted image."""

    app: str
    app_namespace: str
    project: str | None
    action: Literal["rollback"]
    bad_images: list[str]
    reasons: list[str]
    current_revision: str | None
    current_revisions: list[str]
    known_good_revision: Annotated[
        str | None,
        Meta(description="newest successful deploy that ran none of bad_images; null if unknown"),
    ]
    known_good_revisions: list[str]
    requested_at: Timestamp
    delivery_id: str | None


#: A Block Kit block: an object with a ``type`` (Slack checks the rest).
Block = Annotated[JsonObject, Meta(extra_json_schema={"required": ["type"]})]


class Notification(Record, kw_only=True, tag=NOTIFICATION_V1):
    """``<prefix>notifications``: one Slack-ready message with its idempotency key."""

    idempotency_key: NonEmpty
    kind: Annotated[
        Literal["deployment", "violation", "health"],
        Meta(
            description="deployment: an announced operation; violation: a retroactive policy "
            "violation; health: the app's health changed after a deploy (added within v1). "
            "More kinds may be added within v1."
        ),
    ]
    app: str
    app_namespace: str
    project: str | None
    channel: NonEmpty
    text: NonEmpty
    blocks: Annotated[list[Block], Meta(max_length=50)]
    deployment: Deployment | None
    violation: Violation | None
    created_at: Timestamp
    thread_under: Annotated[
        str | None,
        Meta(
            description="The idempotency key of the message to reply to (health: the "
            "deployment's message); the connector threads under it when threads are on and it "
            "knows that message, else posts a plain message. Added within v1."
        ),
    ] = None


class Metric(Record, kw_only=True, tag=METRIC_V1):
    """``<prefix>metrics``: one fact for the exporter to fold into Prometheus series.

    The nullable fields apply to the kinds named in their descriptions; null for the others.
    """

    kind: Literal["deployment", "duplicate", "resync", "stale", "violation", "dead_letter"]
    app: str
    project: str | None
    timestamp: float
    delivery_id: str | None
    latency_seconds: Annotated[
        float | None, Meta(description="deployment, resync: bridge receipt to decision")
    ]
    running_images: Annotated[int | None, Meta(description="deployment, resync")]
    image_changes: Annotated[int | None, Meta(description="deployment: added + removed + changed")]
    phase: Annotated[str | None, Meta(description="deployment")]
    initial: Annotated[bool | None, Meta(description="deployment")]
    rule: Annotated[str | None, Meta(description="violation: denylist | unexpected")]
    image: Annotated[str | None, Meta(description="violation: the offending image")]


class DoraEvent(Record, kw_only=True, tag=DORA_V1):
    """``<prefix>metrics``: one DORA finding about an app (docs/dora.md), for the exporter.

    ``health_transition``: a delivery for an operation already decided reported another health;
    ``change_failure``, ``lead_time``, ``recovery``: what ``dora.changes`` found when a fact was
    applied to the app's DORA history. The nullable fields apply to the kinds named in their
    descriptions; null for the others.
    """

    kind: Literal["health_transition", "change_failure", "lead_time", "recovery"]
    app: str
    project: str | None
    timestamp: Annotated[float, Meta(description="When the worker decided it, Unix seconds.")]
    delivery_id: Annotated[str | None, Meta(description="The delivery that brought the fact.")]
    at: Annotated[
        Timestamp,
        Meta(
            description="When it happened: the transition's observedAt (else its receipt), "
            "the failure's start, the deployment's finish, the recovery's end."
        ),
    ]
    health: Annotated[str | None, Meta(description="health_transition: the new health")] = None
    previous_health: Annotated[
        str | None, Meta(description="health_transition: the health recorded before")
    ] = None
    deployment: Annotated[
        str | None,
        Meta(
            description="health_transition, change_failure, lead_time: the delivery id (or its "
            "digest, once compacted) of the deployment it is about"
        ),
    ] = None
    revision: Annotated[
        str | None,
        Meta(description="health_transition: the deployed revision; lead_time: the revision"),
    ] = None
    reason: Annotated[
        Literal["operation", "degraded", "rollback"] | None,
        Meta(description="change_failure: the first rule that applies"),
    ] = None
    seconds: Annotated[
        float | None,
        Meta(
            description="lead_time, recovery: the duration; health_transition: since the "
            "deployment finished"
        ),
    ] = None
    episode: Annotated[Count | None, Meta(description="recovery: the episode's ordinal")] = None
    started_at: Annotated[
        Timestamp | None, Meta(description="recovery: when the failure episode began")
    ] = None


# --- dead letters, Slack state -----------------------------------------------------------------


class DeadLetter(Record, kw_only=True, tag=DEAD_LETTER_V1):
    """``<prefix>dead-letters``: something that could not be processed, and why."""

    component: Literal["bridge", "worker", "slack", "exporter"]
    reason: NonEmpty
    error_type: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    key: str | None
    original: Annotated[Any, Meta(description="the original record's JSON value when it parsed")]
    original_text: Annotated[
        str | None, Meta(description="the original bytes as text when they were not JSON")
    ]
    failed_at: Timestamp


def dead_letter(
    component: Literal["worker", "slack"],
    *,
    reason: str,
    error_type: str,
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    raw: bytes | None,
    failed_at: str,
) -> DeadLetter:
    """The dead letter of the record ``raw`` read at ``topic[partition]@offset``.

    ``original`` is the record's JSON value when ``raw`` parses, else ``original_text`` holds
    ``raw`` as text (``None`` both for a tombstone).
    """
    original: Any = None
    original_text: str | None = None
    if raw is not None:
        try:
            original = orjson.loads(raw)
        except orjson.JSONDecodeError:
            original_text = raw.decode("utf-8", errors="replace")
    return DeadLetter(
        component=component,
        reason=reason,
        error_type=error_type,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=key,
        original=original,
        original_text=original_text,
        failed_at=failed_at,
    )


class StateSource(Part, kw_only=True):
    topic: str
    partition: int
    offset: int


class SlackStateEntry(Record, kw_only=True, tag=SLACK_STATE_V1):
    """``<prefix>slack-state`` (compacted): the Slack connector's state of one key."""

    kind: Annotated[
        Literal["intent", "posted", "dead_lettered", "thread", "channel"],
        Meta(
            description="intent: about to post; posted: Slack accepted it (ts); dead_lettered: "
            "given up (reason); thread: the day's thread parent ts; channel: the channel's id."
        ),
    ]
    key: NonEmpty
    channel: Annotated[
        str | None, Meta(description="The channel as the notification named it (#name or id).")
    ] = None
    channel_id: Annotated[str | None, Meta(description="Slack's channel id, once known.")] = None
    ts: Annotated[str | None, Meta(description="Slack's message timestamp (posted, thread).")] = (
        None
    )
    thread_ts: Annotated[
        str | None, Meta(description="The thread the message was (to be) posted in.")
    ] = None
    at: Annotated[float, Meta(description="When this state was written, Unix seconds.")]
    source: Annotated[
        StateSource | None, Meta(description="The notifications record this state is about.")
    ] = None
    reason: str | None = None


#: Every outbound record type, by its ``schema`` version string.
RECORD_TYPES: dict[str, type[Record]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        SyncEvent,
        PolicyCheck,
        Deployment,
        Notification,
        Metric,
        DoraEvent,
        Violation,
        Remediation,
        PolicyRule,
        DeadLetter,
        SlackStateEntry,
    )
}


def dumps(value: Any) -> bytes:
    """Serialise a record (a Struct or a dict) or any JSON value with orjson.

    A Struct goes through ``msgspec.to_builtins`` (a dict in field order, the tag first), so a
    record's bytes do not depend on whether it was built as a Struct or as a dict. Dicts (the
    worker's hot path) go straight to orjson.
    """
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    return orjson.dumps(value)


def loads_or_none(raw: bytes | None) -> Any:
    """A record value as JSON, or ``None`` for a tombstone or bytes that are not JSON."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
