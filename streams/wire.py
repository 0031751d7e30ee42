"""The wire records as Faust ``Record`` classes (interim: replaced by typed records)."""

from __future__ import annotations

from typing import Any

import faust

from streams import codec  # noqa: F401 - registers the orjson codec
from streams.domain.records import JsonObject


class _Wire(faust.Record, include_metadata=False, serializer="orjson"):
    """Base of every external record."""


class SyncEvent(_Wire):
    """``<prefix>sync-events``: one accepted webhook delivery, as the bridge received it."""

    schema: str
    delivery_id: str
    received_at: str
    shape: str  # "envelope" | "bare"
    app: JsonObject  # {name, namespace, project, uid}
    destination: JsonObject | None
    operation: (
        JsonObject | None
    )  # {phase, message, started_at, finished_at, initiated_by, retry_count}
    health: str | None
    sync_status: str | None
    revision: str
    revisions: list[str]
    sync_result: JsonObject | None
    body_sha256: str


class Deployment(_Wire):
    """``<prefix>deployments``: one announced operation of one app."""

    schema: str
    app: str
    app_namespace: str
    project: str | None
    destination: JsonObject | None
    revision: str
    revisions: list[str]
    previous_revision: str | None
    previous_revisions: list[str]
    operation: JsonObject
    health: str | None
    initial: bool
    rollback: bool
    fingerprint: str
    images: list[str]
    images_added: list[str]
    images_removed: list[str]
    images_changed: list[JsonObject]
    hook_images: list[str]
    resources_changed: list[JsonObject]
    resources_unchanged: int
    failed_resources: list[JsonObject]
    violations: list[JsonObject]
    invalid_images: list[JsonObject]
    source: JsonObject | None
    sources: list[JsonObject]
    received_at: str
    delivery_id: str


class Notification(_Wire):
    """``<prefix>notifications``: one Slack-ready message with its idempotency key."""

    schema: str
    idempotency_key: str
    kind: str  # "deployment" | "violation"
    app: str
    app_namespace: str
    project: str | None
    channel: str
    text: str
    blocks: list[JsonObject]
    deployment: JsonObject | None
    violation: JsonObject | None
    created_at: str


class MetricEvent(_Wire):
    """``<prefix>metrics``: one fact for the exporter to fold into Prometheus series.

    ``kind`` is ``deployment``, ``duplicate``, ``resync``, ``stale``, ``violation`` or
    ``dead_letter``; the optional fields apply to the kinds named beside them.
    """

    schema: str
    kind: str
    app: str  # qualified name ns/app
    project: str | None
    timestamp: float  # event time, Unix seconds
    delivery_id: str | None
    latency_seconds: float | None = None  # deployment, resync: received_at -> emitted
    running_images: int | None = None  # deployment, resync
    image_changes: int | None = None  # deployment: added + removed + changed
    phase: str | None = None  # deployment
    initial: bool | None = None  # deployment
    rule: str | None = None  # violation: denylist | unexpected
    image: str | None = None  # violation: the offending image


class Violation(_Wire):
    """``<prefix>violations``: one image that breaks one policy rule."""

    schema: str
    app: str
    app_namespace: str
    project: str | None
    image: str
    rule: str  # "denylist" | "unexpected"
    rule_id: str
    reason: str
    detected: str  # "deploy" | "retroactive"
    revision: str | None
    revisions: list[str]
    delivery_id: str | None
    detected_at: str


class Remediation(_Wire):
    """``<prefix>remediations``: a rollback request for an app running a denylisted image."""

    schema: str
    app: str
    app_namespace: str
    project: str | None
    action: str  # "rollback"
    bad_images: list[str]
    reasons: list[str]
    current_revision: str | None
    current_revisions: list[str]
    known_good_revision: str | None
    known_good_revisions: list[str]
    requested_at: str
    delivery_id: str | None


class PolicyRule(_Wire):
    """``<prefix>policy`` (compacted, keyed by rule id): one deny or allow rule."""

    schema: str
    id: str
    kind: str  # "deny" | "allow"
    reason: str
    image: str | None = None  # deny: exact ref, repository:tag-glob, or digest
    patterns: list[str] | None = None  # allow: registry or repository globs
    apps: str = "*"
    projects: str = "*"
    namespaces: str = "*"
    created_at: str | None = None


class DeadLetter(_Wire):
    """``<prefix>dead-letters``: something that could not be processed, and why."""

    schema: str
    component: str  # bridge | worker | slack | exporter
    reason: str
    error_type: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    key: str | None
    original: Any  # the original record's JSON value, when it parsed
    original_text: str | None  # the original bytes as text when they were not JSON
    failed_at: str
