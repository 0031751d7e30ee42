"""What ``synctrail dev`` prints per event: one readable line per decision the worker made.

The lines come from the topics, not from the worker's log, so production processes are
unchanged: the dev process reads ``deployments`` (one record per announced operation, with its
image changes and policy violations) and ``metrics`` (which also says when an event was a
duplicate, stale, a resync or dead-lettered) with ``read_committed``, like ``synctrail tail``,
and prints for instance::

    06:12:03 guestbook deployed 00c875f: 1 image changed (guestbook-ui v1.4.0 → v1.5.0)
    06:12:04 guestbook duplicate, not announced
    06:12:05 storefront deployed 9a1f2c3: 1 image added (+miner:1)
             ⚠ denylist: registry.evil/miner:1 — crypto miner

Violations are red on a terminal.

The line's time is the record's (the worker's decision), in local time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer

from streams.domain.records import loads_or_none
from streams.domain.render import revision_label
from streams.kafka.client import Connection, reader_args
from streams.kafka.offsets import topic_partitions
from streams.kafka.topics import DEPLOYMENTS, METRICS

# What a metric kind means to the person watching; ``deployment`` and ``violation`` are left
# out because the deployment record says the same with more detail.
_SKIPPED = {
    "duplicate": "duplicate, not announced",
    "stale": "stale (older than its latest operation), not announced",
    "resync": "resync with nothing changed, not announced",
    "dead_letter": "could not be processed: dead-lettered (synctrail replay-dead-letters)",
}
_MAX_LISTED = 3
_RED = "\x1b[1;31m"
_RESET = "\x1b[0m"


def _app_name(key: str) -> str:
    """``argocd/guestbook`` → ``guestbook``."""
    return key.rpartition("/")[2] or key


def _short_digest(text: str) -> str:
    """``…@sha256:<64 hex>`` → ``…@sha256:<12 hex>…``."""
    head, at, digest = text.partition("@")
    algo, colon, hexpart = digest.partition(":")
    if at and colon and len(hexpart) > 12:
        return f"{head}@{algo}:{hexpart[:12]}…"
    return text


def _short_ref(ref: str) -> str:
    """``docker.io/library/redis:7.2.4`` → ``redis:7.2.4``; digests shortened."""
    return _short_digest(ref.rpartition("/")[2] or ref)


def _suffix(repository: str, ref: str) -> str:
    rest = ref[len(repository) :] if ref.startswith(repository) else ref
    return _short_digest(rest.lstrip(":"))


def _listed(parts: list[str]) -> str:
    return ", ".join(parts[:_MAX_LISTED]) + (", …" if len(parts) > _MAX_LISTED else "")


def _running(deployment: Mapping[str, Any]) -> str:
    images = [str(ref) for ref in deployment.get("images") or []]
    if not images:
        return "no images"
    n = len(images)
    return f"{n} image{'s' if n != 1 else ''} ({_listed([_short_ref(r) for r in images])})"


def _image_changes(deployment: Mapping[str, Any]) -> str:
    changed = deployment.get("images_changed") or []
    added = deployment.get("images_added") or []
    removed = deployment.get("images_removed") or []
    parts: list[str] = []
    for c in changed:
        repo = str(c.get("repository", ""))
        short = repo.rpartition("/")[2] or repo
        before, after = _suffix(repo, str(c.get("from", ""))), _suffix(repo, str(c.get("to", "")))
        parts.append(f"{short} {before} → {after}")
    parts += [f"+{_short_ref(ref)}" for ref in added]
    parts += [f"-{_short_ref(ref)}" for ref in removed]
    if not parts:
        running = len(deployment.get("images") or [])
        return f"no image changed ({running} running)"
    counts = []
    for n, what in ((len(changed), "changed"), (len(added), "added"), (len(removed), "removed")):
        if n:
            counts.append(f"{n} image{'s' if n != 1 else ''} {what}")
    return f"{', '.join(counts)} ({_listed(parts)})"


def deployment_lines(deployment: Mapping[str, Any]) -> list[str]:
    """A deployment record as one line, plus one indented line per policy violation."""
    app = str(deployment.get("app") or "?")
    revision = revision_label(deployment)
    operation = deployment.get("operation") or {}
    phase = operation.get("phase") or "?"
    if phase != "Succeeded":
        message = " ".join(str(operation.get("message") or "").split())
        if len(message) > 100:
            message = message[:99] + "…"
        line = f"{app} sync {phase} at {revision}" + (f": {message}" if message else "")
    else:
        if deployment.get("initial"):
            line = f"{app} first deploy {revision}: {_running(deployment)}"
        else:
            verb = "rolled back to" if deployment.get("rollback") else "deployed"
            line = f"{app} {verb} {revision}: {_image_changes(deployment)}"
    lines = [line]
    for v in deployment.get("violations") or []:
        lines.append(f"⚠ {v.get('rule')}: {v.get('image')} — {v.get('reason')}")
    return lines


def metric_line(metric: Mapping[str, Any]) -> str | None:
    """The line for a metric event that was not announced, or None for the others."""
    what = _SKIPPED.get(str(metric.get("kind")))
    if what is None:
        return None
    return f"{_app_name(str(metric.get('app') or '?'))} {what}"


def event_lines(topic_name: str, value: Any, when: float, *, color: bool = False) -> list[str]:
    """The lines to print for one record of ``deployments`` or ``metrics`` (maybe none)."""
    if not isinstance(value, dict):
        return []
    if topic_name == DEPLOYMENTS.name:
        lines = deployment_lines(value)
    elif topic_name == METRICS.name:
        line = metric_line(value)
        lines = [line] if line else []
    else:
        return []
    if not lines:
        return []
    stamp = time.strftime("%H:%M:%S", time.localtime(when))
    out = [f"{stamp} {lines[0]}"]
    for extra in lines[1:]:
        text = f"{' ' * len(stamp)} {extra}"
        out.append(f"{_RED}{text}{_RESET}" if color else text)
    return out


async def feed(
    bootstrap: Connection,
    prefix: str,
    *,
    out: TextIO = sys.stdout,
    ready: asyncio.Event | None = None,
) -> None:
    """Print the readable lines of every new decision until cancelled."""
    names = {DEPLOYMENTS.address(prefix): DEPLOYMENTS.name, METRICS.address(prefix): METRICS.name}
    consumer = AIOKafkaConsumer(**reader_args(bootstrap))
    await consumer.start()
    try:
        tps = []
        for topic in names:
            tps += await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        if ready is not None:
            ready.set()
        color = out.isatty()
        while True:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                for record in records:
                    lines = event_lines(
                        names[record.topic],
                        loads_or_none(record.value),
                        record.timestamp / 1000,
                        color=color,
                    )
                    for line in lines:
                        print(line, file=out)
            if got:
                out.flush()
    finally:
        await consumer.stop()
