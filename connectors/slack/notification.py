"""A record of ``<prefix>notifications`` as the Slack connector sees it (pure).

``parse_notification`` decodes one into its type (:class:`streams.domain.records.Notification`)
and checks what posting needs beyond the type; ``Item`` is one fetched record on its way through
a channel's lane, with its decoded notification or the reason it is not one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from aiokafka import TopicPartition

from streams.domain.records import Notification

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_DECODER = msgspec.json.Decoder(Notification)


class InvalidNotification(ValueError):
    """A record on the notifications topic that cannot be posted as it is."""


def parse_notification(raw: bytes | None) -> Notification:
    """The notification in ``raw``, checked for what posting needs; raises ``InvalidNotification``.

    The reason names the field path and the problem (msgspec's ``... - at `$.text```).
    """
    if raw is None:
        raise InvalidNotification("empty record (tombstone)")
    try:
        note = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        problem = str(exc)
        if problem.startswith("Expected `object`") and " - at `" not in problem:
            raise InvalidNotification(f"not a JSON object: {problem}") from exc
        raise InvalidNotification(problem) from exc
    except msgspec.DecodeError as exc:
        raise InvalidNotification(f"not JSON: {exc}") from exc
    if not note.text.strip():
        raise InvalidNotification("text: expected a non-empty string (the fallback text)")
    return note


def thread_day(created_at: str) -> str:
    """The UTC day of a notification's ``created_at`` (today if unreadable)."""
    created = created_at[:10]
    return created if _DAY.fullmatch(created) else datetime.now(UTC).strftime("%Y-%m-%d")


@dataclass(slots=True)
class Item:
    """One fetched record: where it came from, its bytes, and its notification (or why not)."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    note: Notification | None
    error: str = ""


def make_item(tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> Item:
    """The ``Item`` of a fetched record; ``note`` is None (and ``error`` says why) if invalid."""
    try:
        return Item(tp, offset, key, value, parse_notification(value))
    except InvalidNotification as exc:
        return Item(tp, offset, key, value, None, str(exc))
