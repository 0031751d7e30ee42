"""Helpers for bridge tests: settings, an in-process bridge, request bodies."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from connectors.bridge.server import BRIDGE, Bridge, create_app
from connectors.bridge.settings import BridgeSettings
from tests.support import SHARED_FIXTURES, load_expected

TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def bridge_settings(
    bootstrap: str, prefix: str, spool_dir: Path, **overrides: Any
) -> BridgeSettings:
    """Settings for a test bridge: fast failure detection, its own prefix and spool."""
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "bridge_tokens": f"{TOKEN},second-token",
        "bridge_spool_dir": spool_dir,
        "bridge_produce_timeout_s": 2.0,
        "bridge_probe_after_s": 0.1,
        "bridge_drain_interval_s": 0.2,
    }
    values.update(overrides)
    return BridgeSettings(**values)


@contextlib.asynccontextmanager
async def running_bridge(settings: BridgeSettings) -> AsyncIterator[tuple[TestClient, Bridge]]:
    """The bridge in this process, with a client for it; stopped (gracefully) on exit."""
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        yield client, app[BRIDGE]


def valid_fixtures() -> list[dict[str, Any]]:
    """expected.json entries of the valid fixture files, with their bytes under ``raw``."""
    out = []
    for entry in load_expected():
        if entry.get("valid", True):
            out.append({**entry, "raw": (SHARED_FIXTURES / entry["file"]).read_bytes()})
    return out


def fixture_bytes(name: str) -> bytes:
    """The bytes of one shared fixture file."""
    return (SHARED_FIXTURES / name).read_bytes()


def envelope(app: str, seq: int, namespace: str = "argocd") -> bytes:
    """A small valid envelope for ``namespace/app`` whose revision carries ``seq``."""
    revision = f"rev-{seq:06d}"
    body = {
        "schemaVersion": 1,
        "app": {"name": app, "namespace": namespace, "project": "default", "uid": "u-1"},
        "destination": {"server": "https://kubernetes.default.svc", "name": "", "namespace": app},
        "operation": {
            "phase": "Succeeded",
            "message": "successfully synced (all tasks run)",
            "startedAt": f"2026-07-07T14:{seq // 60 % 60:02d}:{seq % 60:02d}Z",
            "finishedAt": "",
            "initiatedBy": {"automated": True},
            "retryCount": 0,
        },
        "health": "Healthy",
        "syncStatus": "Synced",
        "revision": revision,
        "revisions": [],
        "syncResult": {
            "resources": [
                {
                    "group": "apps",
                    "version": "v1",
                    "kind": "Deployment",
                    "namespace": app,
                    "name": "web",
                    "status": "Synced",
                    "images": [f"ghcr.io/acme/{app}:{seq}"],
                }
            ],
            "revision": revision,
        },
    }
    return orjson.dumps(body)


def seq_of(record_value: dict[str, Any]) -> int:
    """The sequence number :func:`envelope` put into a record's revision."""
    return int(record_value["revision"].removeprefix("rev-"))
