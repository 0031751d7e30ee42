"""A record of ``<prefix>notifications`` as the Slack connector sees it (pure).

``parse_notification`` checks what posting needs; ``Item`` is one fetched record on its way
through a channel's lane, with its parsed notification or the reason it is not one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition

from streams.domain.records import NOTIFICATION_V1

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidNotification(ValueError):
    """A record on the notifications topic that cannot be posted as it is."""


def parse_notification(raw: bytes | None) -> dict[str, Any]:
    """The notification in ``raw``, checked for what posting needs; raises ``InvalidNotification``."""
    if raw is None:
        raise InvalidNotification("empty record (tombstone)")
    try:
        note = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidNotification(f"not JSON: {exc}") from exc
    if not isinstance(note, dict):
        raise InvalidNotification("not a JSON object")
    if note.get("schema") != NOTIFICATION_V1:
        raise InvalidNotification(f"schema is {note.get('schema')!r}, expected {NOTIFICATION_V1}")
    key = note.get("idempotency_key")
    if not isinstance(key, str) or not key:
        raise InvalidNotification("idempotency_key: expected a non-empty string")
    if not isinstance(note.get("text"), str) or not note["text"].strip():
        raise InvalidNotification("text: expected a non-empty string (the fallback text)")
    if not isinstance(note.get("blocks") or [], list):
        raise InvalidNotification("blocks: expected a list")
    if note.get("channel") is not None and not isinstance(note["channel"], str):
        raise InvalidNotification("channel: expected a string")
    return note


def thread_day(note: dict[str, Any]) -> str:
    """The UTC day a notification belongs to (its ``created_at``; today if unreadable)."""
    created = str(note.get("created_at") or "")[:10]
    return created if _DAY.fullmatch(created) else datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class Item:
    """One fetched record: where it came from, its bytes, and its notification (or why not)."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    note: dict[str, Any] | None
    error: str = ""


def make_item(tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> Item:
    """The ``Item`` of a fetched record; ``note`` is None (and ``error`` says why) if invalid."""
    try:
        return Item(tp, offset, key, value, parse_notification(value))
    except InvalidNotification as exc:
        return Item(tp, offset, key, value, None, str(exc))
