"""Whole-pipeline helpers: worker child processes, fixture payloads as sync events, the oracle."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from connectors.bridge.events import bare_event, envelope_event
from connectors.broker import free_port
from tests.support import SHARED_FIXTURES, Service, load_expected, wait_for

CHANGE_NAMES = {
    "created": "created",
    "configured": "configured",
    "replaced": "replaced",
    "pruned": "pruned",
    "prune_skipped": "pruneSkipped",
    "sync_failed": "syncFailed",
    "change_unknown": "changeUnknown",
}


@dataclass
class FixtureEvent:
    """One fixture file as the sync event the bridge would publish for it."""

    file: str
    key: str
    event: dict[str, Any]
    expected: dict[str, Any]

    @property
    def raw(self) -> bytes:
        return orjson.dumps(self.event)


def fixture_events() -> Iterator[FixtureEvent]:
    """Every valid fixture file in delivery order, converted like the bridge converts it."""
    for entry in load_expected():
        if not entry.get("valid"):
            continue
        raw = (SHARED_FIXTURES / entry["file"]).read_bytes()
        body = orjson.loads(raw)
        delivery_id = f"{entry['file']}#{uuid.uuid4().hex[:8]}"
        stamp = "2026-11-28T10:00:00.000Z"
        if entry["shape"] == "envelope":
            event = envelope_event(
                body, raw, default_namespace="argocd", delivery_id=delivery_id, received_at=stamp
            )
        else:
            namespace, name = entry["requestPath"].removeprefix("/v1/sync/").split("/")
            event = bare_event(
                body,
                raw,
                namespace=namespace,
                name=name,
                delivery_id=delivery_id,
                received_at=stamp,
            )
        yield FixtureEvent(entry["file"], entry["app"], event, entry)


def resource_label(resource: dict[str, Any]) -> str:
    """``Kind/namespace/name`` (``Kind/name`` when cluster-scoped), as expected.json writes it."""
    if resource["namespace"]:
        return f"{resource['kind']}/{resource['namespace']}/{resource['name']}"
    return f"{resource['kind']}/{resource['name']}"


def derived_view(deployment: dict[str, Any]) -> dict[str, Any]:
    """A deployment record in expected.json's vocabulary, for comparison with the oracle."""
    changes: dict[str, Any] = {}
    for resource in deployment["resources_changed"]:
        changes.setdefault(CHANGE_NAMES[resource["change"]], []).append(resource_label(resource))
    changes["unchanged"] = deployment["resources_unchanged"]
    return {
        "operationPhase": deployment["operation"]["phase"],
        "revision": deployment["revision"],
        "revisions": deployment["revisions"],
        "runningImages": deployment["images"],
        "imagesAdded": deployment["images_added"],
        "imagesRemoved": deployment["images_removed"],
        "imagesChanged": deployment["images_changed"],
        "hookImages": deployment["hook_images"],
        "resourceChanges": changes,
        "failedResources": [
            {"resource": resource_label(r), "hookType": r["hook_type"], "images": r["images"]}
            for r in deployment["failed_resources"]
        ]
        or None,
        "initial": deployment["initial"],
    }


def expected_view(entry: dict[str, Any]) -> dict[str, Any]:
    """The oracle entry reduced to the fields ``derived_view`` produces."""
    view = {
        key: entry.get(key)
        for key in (
            "operationPhase",
            "revision",
            "revisions",
            "runningImages",
            "imagesAdded",
            "imagesRemoved",
            "imagesChanged",
            "hookImages",
            "resourceChanges",
            "failedResources",
        )
    }
    view["initial"] = entry["previousFile"] is None
    return view


class Worker(Service):
    """``synctrail worker`` as a child process with its own web port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        super().__init__(["worker"], {**env, "SYNCTRAIL_WORKER_WEB_PORT": str(self.port)}, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}{path}", params=params) as response,
        ):
            return response.status, orjson.loads(await response.read())

    async def metric(self, name: str, **labels: str) -> float | None:
        """One sample from the worker's ``/metrics``, or ``None`` when it is not there."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/metrics") as response,
        ):
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()[-3000:]}")
            try:
                status, _ = await self.get("/readyz")
            except (aiohttp.ClientError, OSError, orjson.JSONDecodeError):
                return False
            return status == 200

        await wait_for(ready, timeout=timeout, interval=0.2, what="worker /readyz")


def synthetic_envelope(app: str, deploy: int, images: list[str]) -> bytes:
    """An envelope body like Argo CD's for app ``argocd/<app>``, deploy number ``deploy``."""
    revision = f"{deploy:08x}{abs(hash(app)) % 10**8:08d}".ljust(40, "0")
    body = {
        "schemaVersion": 1,
        "app": {"name": app, "namespace": "argocd", "project": "default", "uid": app},
        "destination": {"server": "https://kubernetes.default.svc", "name": "", "namespace": app},
        "operation": {
            "phase": "Succeeded",
            "message": "successfully synced (all tasks run)",
            "startedAt": f"2026-07-06T10:{deploy:02d}:00Z",
            "finishedAt": f"2026-07-06T10:{deploy:02d}:30Z",
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
                    "name": f"{app}-{i}",
                    "status": "Synced",
                    "message": f"deployment.apps/{app}-{i} configured",
                    "hookPhase": "Running",
                    "syncPhase": "Sync",
                    "images": [image],
                }
                for i, image in enumerate(images)
            ],
            "revision": revision,
            "source": {
                "repoURL": f"https://github.com/acme/{app}.git",
                "path": ".",
                "targetRevision": "main",
            },
        },
    }
    return orjson.dumps(body) + b"\n"


def synthetic_events(apps: int, deploys: int) -> list[FixtureEvent]:
    """``apps`` apps deployed ``deploys`` times each (interleaved), every deploy a tag bump."""
    out = []
    for deploy in range(deploys):
        for index in range(apps):
            name = f"svc-{index:03d}"
            images = [f"ghcr.io/acme/{name}:1.{deploy}.0", "docker.io/library/redis:7.2"]
            if deploy % 2:
                images.append(f"quay.io/acme/sidecar:{deploy}")
            raw = synthetic_envelope(name, deploy, images)
            event = envelope_event(
                orjson.loads(raw),
                raw,
                default_namespace="argocd",
                delivery_id=f"{name}#{deploy}",
                received_at="2026-11-28T10:00:00.000Z",
            )
            out.append(FixtureEvent(f"{name}#{deploy}", f"argocd/{name}", event, {}))
    return out
