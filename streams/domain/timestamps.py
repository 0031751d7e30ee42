"""Timestamps as synctrail writes them: RFC 3339 in UTC with milliseconds and ``Z``
(``2026-07-06T09:13:42.123Z``, milliseconds truncated), and reading one back.

Every record's time field (``received_at``, ``detected_at``, ``failed_at``, ...) and the JSON
log lines' ``ts`` are made here. Cheap on the hot paths: the bridge stamps every request and
the worker several fields of every record, and ``strftime`` is the slow part, so the date and
seconds of a Unix time are formatted once per second and a datetime's text is cached.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

_TO_SECONDS = "%Y-%m-%dT%H:%M:%S."
_last_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def format_unix(seconds: float) -> str:
    """``seconds`` (Unix time, not negative) as RFC 3339 UTC with milliseconds and ``Z``: the
    float's milliseconds, truncated (``time.time()``, a log record's ``created``). A time kept
    rounded to the millisecond (``round(t, 3)``) may be a hair below it as a float: write it
    with ``format_datetime(datetime.fromtimestamp(t, UTC))``, which rounds to the microsecond
    first."""
    global _last_second
    whole = int(seconds)
    cached, prefix = _last_second
    if whole != cached:
        prefix = datetime.fromtimestamp(whole, UTC).strftime(_TO_SECONDS)
        _last_second = (whole, prefix)
    return f"{prefix}{int((seconds - whole) * 1000):03d}Z"


def now() -> str:
    """The current time as RFC 3339 UTC with milliseconds and ``Z``."""
    return format_unix(time.time())


@functools.lru_cache(maxsize=64)
def format_datetime(moment: datetime) -> str:
    """``moment`` (an aware datetime; a naive one is taken as local time) as RFC 3339 UTC with
    milliseconds and ``Z``.

    Cached: the worker stamps every record of a batch with the same ``now``, several times per
    record.
    """
    return moment.astimezone(UTC).strftime(_TO_SECONDS) + f"{moment.microsecond // 1000:03d}Z"


def parse(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (UTC when it names no offset); ``None`` for
    a missing or unparseable value, or one that is not a string."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
