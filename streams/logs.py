"""Structured logging: one JSON object per line on stderr, no secrets, no bodies at INFO.

``SYNCTRAIL_LOG_FORMAT=text`` gives lines for a person instead (``synctrail dev`` uses it):
time, level, logger, message, then the ``extra`` fields as ``key=value``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from streams.domain import timestamps

# Attributes every LogRecord has; anything else passed through ``extra=`` becomes a JSON field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """Format a record as a compact JSON object with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": timestamps.format_unix(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    """``06:12:03 WARNING streams.agents message key=value ...`` (the time is local)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        head, sep, rest = line.partition("\n")  # a traceback stays after the fields
        return f"{head} {fields}{sep}{rest}"


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Install the root handler once per process."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every failed connection attempt at ERROR; they are expected while a
    # broker is down (the bridge spools), so keep them at WARNING and above only.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
