"""Turning a validated webhook body into a ``synctrail.sync-event/v1`` record (pure functions).

The record is a plain dict with exactly the fields of :class:`streams.domain.records.SyncEvent`; it is
serialised with orjson on the hot path rather than through Faust.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

from streams.domain.records import SYNC_EVENT_V1

_ids = random.Random(os.urandom(32))
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_delivery_id() -> str:
    """A fresh delivery id: a random (version 4) UUID as 32 hex digits.

    Identifiers, not secrets: a generator seeded from the OS per process avoids a system
    call per request (os.urandom shows up in profiles of the hot path).
    """
    return f"{(_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def qualified_name(namespace: str, name: str) -> str:
    """The Kafka key of an application: ``<app namespace>/<app name>``."""
    return f"{namespace}/{name}"


def _or_none(value: Any) -> Any:
    # The envelope template renders absent optional strings as "", which means "unknown".
    return value if value not in ("", None) else None


def _operation(op: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": op["phase"],
        "message": op.get("message") or "",
        "started_at": op["startedAt"],
        "finished_at": _or_none(op.get("finishedAt")),
        "initiated_by": op.get("initiatedBy") or {},
        "retry_count": op.get("retryCount", 0),
    }


def _destination(dest: dict[str, Any] | None) -> dict[str, Any] | None:
    if not dest:
        return None
    return {
        "server": dest.get("server", ""),
        "name": dest.get("name", ""),
        "namespace": dest.get("namespace", ""),
    }


def envelope_event(
    body: dict[str, Any],
    raw: bytes,
    *,
    default_namespace: str,
    delivery_id: str,
    received_at: str,
) -> dict[str, Any]:
    """The sync-event record for a validated envelope body."""
    app = body["app"]
    sync_result = body.get("syncResult")
    # The envelope's top-level revision(s) mirror syncResult; fall back to it when left out.
    fallback = sync_result or {}
    return {
        "schema": SYNC_EVENT_V1,
        "delivery_id": delivery_id,
        "received_at": received_at,
        "shape": "envelope",
        "app": {
            "name": app["name"],
            "namespace": app.get("namespace") or default_namespace,
            "project": _or_none(app.get("project")),
            "uid": _or_none(app.get("uid")),
        },
        "destination": _destination(body.get("destination")),
        "operation": _operation(body["operation"]),
        "health": _or_none(body.get("health")),
        "sync_status": _or_none(body.get("syncStatus")),
        "revision": body.get("revision", fallback.get("revision", "")),
        "revisions": body.get("revisions", fallback.get("revisions", [])),
        "sync_result": sync_result,
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "observed_at": body.get("observedAt"),
        "commit": _commit(body.get("commit")),
    }


def _commit(commit: dict[str, Any] | None) -> dict[str, Any] | None:
    if commit is None:
        return None
    return {
        "revision": commit["revision"],
        "date": commit["date"],
        "author": commit.get("author"),
        "message": commit.get("message"),
    }


def bare_event(
    body: dict[str, Any],
    raw: bytes,
    *,
    namespace: str,
    name: str,
    delivery_id: str,
    received_at: str,
) -> dict[str, Any]:
    """The sync-event record for a validated bare syncResult posted for ``namespace/name``."""
    return {
        "schema": SYNC_EVENT_V1,
        "delivery_id": delivery_id,
        "received_at": received_at,
        "shape": "bare",
        "app": {"name": name, "namespace": namespace, "project": None, "uid": None},
        "destination": None,
        "operation": None,
        "health": None,
        "sync_status": None,
        "revision": body.get("revision", ""),
        "revisions": body.get("revisions", []),
        "sync_result": body,
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "observed_at": None,
        "commit": None,
    }


def event_key(event: dict[str, Any]) -> str:
    """The Kafka key of a sync-event record."""
    return qualified_name(event["app"]["namespace"], event["app"]["name"])
