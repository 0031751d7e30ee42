"""The worker's query API and operational endpoints (Faust web server).

- ``GET /apps/{namespace}/{name}`` and ``GET /apps/{name}`` (default namespace): current
  revision, running images, last deploys. Routed to the worker that owns the app's partition.
- ``GET /images?ref=IMAGE``: apps running an image (normalised reference), gathered from every
  worker; ``/images/local`` answers for this worker's partitions only.
- ``GET /metrics``, ``GET /healthz``, ``GET /readyz``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from prometheus_client import generate_latest

from streams.app import Topology
from streams.domain.images import InvalidImageReference, normalize_image


def app_summary(state: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /apps/...`` shows of an app's stored state."""
    return {
        "app": state["app"],
        "app_namespace": state["app_namespace"],
        "project": state.get("project"),
        "destination": state.get("destination"),
        "revision": state.get("revision"),
        "revisions": state.get("revisions", []),
        "fingerprint": state.get("fingerprint"),
        "images": state.get("images", []),
        "health": state.get("health"),
        "last_operation": state.get("last_operation"),
        "violations": [
            {"image": image, "rule_ids": rules}
            for image, rules in sorted(state.get("flagged", {}).items())
        ],
        "deploys": list(reversed(state.get("history", []))),
        "updated_at": state.get("updated_at"),
    }


def local_apps_running(topology: Topology, image: str) -> list[str]:
    """Qualified names of the apps on this worker's partitions that run ``image``."""
    owned = topology.assigned_partitions()
    return sorted(
        key
        for key, state in topology.apps.app_states(containing=orjson.dumps(image))
        if state.get("partition") in owned and image in state.get("images", ())
    )


def _tables_ready(app: Any) -> bool:
    """Recovery done and no rebalance under way: the tables hold every durable state."""
    recovered = app.tables.recovery.completed.is_set()
    return bool(recovered and not app.rebalancing)


def register(topology: Topology) -> None:
    """Attach the views to the app."""
    _register_app_views(topology)
    _register_image_views(topology)
    _register_operational_views(topology)


def _register_app_views(topology: Topology) -> None:
    """``GET /apps/{namespace}/{name}`` and ``GET /apps/{name}``, answered by the app's owner."""
    app = topology.app
    default_ns = topology.settings.default_app_namespace

    async def lookup(view: View, request: Request, key: str) -> Response:
        try:
            return await app.router.route_req("apps", key, view.web, request)
        except SameNode:
            pass
        except (KeyError, ServiceUnavailable):
            return view.error(503, "partition assignment in progress; retry shortly")
        if not _tables_ready(app):  # a table in recovery holds older states, key by key
            return view.error(503, "state recovery in progress; retry shortly")
        state = topology.apps.app_state(key)
        if state is None:
            return view.notfound(f"no deployments seen for app {key!r}", app=key)
        return view.json(app_summary(state))

    @app.page("/apps/{namespace}/{name}")
    class QualifiedAppView(View):
        async def get(self, request: Request, namespace: str, name: str) -> Response:
            return await lookup(self, request, f"{namespace}/{name}")

    @app.page("/apps/{name}")
    class AppView(View):
        async def get(self, request: Request, name: str) -> Response:
            return await lookup(self, request, f"{default_ns}/{name}")


def _image_param(view: View, request: Request) -> str | Response:
    """The normalised ``ref`` query parameter, or the 400 answer."""
    ref = request.query.get("ref", "")
    if not ref:
        return view.error(400, "query parameter ref is required, e.g. /images?ref=nginx:1.27")
    try:
        return normalize_image(ref)
    except InvalidImageReference as exc:
        return view.error(400, str(exc))


async def apps_running_everywhere(topology: Topology, image: str) -> tuple[list[str], list[str]]:
    """The apps running ``image`` on this worker and its peers (``/images/local`` of each), and
    the peers that did not answer."""
    app = topology.app
    apps = set(local_apps_running(topology, image))
    me = str(app.conf.canonical_url).rstrip("/")
    peers = [
        str(url).rstrip("/")
        for url in app.router.table_metadata("apps")
        if str(url).rstrip("/") != me
    ]

    async def ask(peer: str) -> list[str]:
        async with app.http_client.get(f"{peer}/images/local", params={"ref": image}) as response:
            response.raise_for_status()
            return list(orjson.loads(await response.read())["apps"])

    results = await asyncio.gather(*(ask(p) for p in peers), return_exceptions=True)
    failed = [p for p, r in zip(peers, results, strict=True) if isinstance(r, BaseException)]
    for result in results:
        if isinstance(result, list):
            apps.update(result)
    return sorted(apps), failed


def _register_image_views(topology: Topology) -> None:
    """``GET /images?ref=`` (every worker) and ``GET /images/local?ref=`` (this one)."""
    app = topology.app

    @app.page("/images/local")
    class LocalImageView(View):
        async def get(self, request: Request) -> Response:
            image = _image_param(self, request)
            if not isinstance(image, str):
                return image
            return self.json({"image": image, "apps": local_apps_running(topology, image)})

    @app.page("/images")
    class ImageView(View):
        async def get(self, request: Request) -> Response:
            image = _image_param(self, request)
            if not isinstance(image, str):
                return image
            apps, failed = await apps_running_everywhere(topology, image)
            body: dict[str, Any] = {"image": image, "apps": apps}
            if failed:
                body["incomplete"] = failed
            return self.json(body, status=200 if not failed else 206)


def _register_operational_views(topology: Topology) -> None:
    """``GET /metrics``, ``GET /healthz`` and ``GET /readyz``."""
    app = topology.app

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(topology.metrics.registry), content_type="text/plain; version=0.0.4"
            )

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            ready = recovered and not app.rebalancing
            return self.json(
                {"ready": ready, "recovered": recovered, "rebalancing": app.rebalancing},
                status=200 if ready else 503,
            )
