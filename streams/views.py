"""The worker's query API and operational endpoints (Faust web server).

- ``GET /apps/{namespace}/{name}`` and ``GET /apps/{name}`` (default namespace): current
  revision, running images, last deploys. Routed to the worker that owns the app's partition.
- ``GET /images?ref=IMAGE``: apps running an image (normalised reference), gathered from every
  worker; ``/images/local`` answers for this worker's partitions only.
- ``GET /dora?app=NS/NAME`` (routed to the app's owner) and ``GET /dora?project=P`` (gathered
  from every worker's ``/dora/local?project=P``), with optional ``since``/``until``: the four
  DORA keys (docs/dora.md). :func:`dora_query` reads the parameters, :func:`dora_answer` builds
  the body; both pure.
- ``GET /metrics``, ``GET /healthz``, ``GET /readyz``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from prometheus_client import generate_latest

from streams.app import Topology, decoded_states
from streams.domain import dora, timestamps
from streams.domain.images import InvalidImageReference, normalize_image

#: The longest wait for a peer's part of a gathered answer (``/images``, ``/dora?project=``):
#: a peer that does not answer by then is listed in ``"incomplete"``.
PEER_TIMEOUT_S = 10.0


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
    _register_dora_views(topology)
    _register_operational_views(topology)


def _recovering(view: View) -> Response:
    return view.error(503, "state recovery in progress; retry shortly")


async def _at_owner(topology: Topology, view: View, request: Request, key: str) -> Response | None:
    """The answer of the worker owning app ``key`` (the request forwarded to it), a 503 while
    partitions are assigned or the table recovers, or ``None``: this worker owns it and its
    table is ready to answer."""
    app = topology.app
    try:
        return await app.router.route_req("apps", key, view.web, request)
    except SameNode:
        pass
    except (KeyError, ServiceUnavailable):
        return view.error(503, "partition assignment in progress; retry shortly")
    if not _tables_ready(app):  # a table in recovery holds older states, key by key
        return _recovering(view)
    return None


def _register_app_views(topology: Topology) -> None:
    """``GET /apps/{namespace}/{name}`` and ``GET /apps/{name}``, answered by the app's owner."""
    app = topology.app
    default_ns = topology.settings.default_app_namespace

    async def lookup(view: View, request: Request, key: str) -> Response:
        if (elsewhere := await _at_owner(topology, view, request, key)) is not None:
            return elsewhere
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


async def ask_peers(
    topology: Topology,
    path: str,
    params: Mapping[str, str],
    read: Callable[[Any], Any],
) -> tuple[list[Any], list[str]]:
    """``GET path?params`` of every other worker of the group, each answer's JSON body passed
    through ``read``: the answers read, and the peers that failed (no answer within
    :data:`PEER_TIMEOUT_S`, a status other than 2xx, or a body ``read`` refused)."""
    app = topology.app
    me = str(app.conf.canonical_url).rstrip("/")
    peers = [
        str(url).rstrip("/")
        for url in app.router.table_metadata("apps")
        if str(url).rstrip("/") != me
    ]
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)

    async def ask(peer: str) -> Any:
        async with app.http_client.get(
            f"{peer}{path}", params=dict(params), timeout=timeout
        ) as response:
            response.raise_for_status()
            return read(orjson.loads(await response.read()))

    results = await asyncio.gather(*(ask(p) for p in peers), return_exceptions=True)
    failed = [p for p, r in zip(peers, results, strict=True) if isinstance(r, BaseException)]
    return [r for r in results if not isinstance(r, BaseException)], failed


async def apps_running_everywhere(topology: Topology, image: str) -> tuple[list[str], list[str]]:
    """The apps running ``image`` on this worker and its peers (``/images/local`` of each), and
    the peers that did not answer."""
    apps = set(local_apps_running(topology, image))
    answers, failed = await ask_peers(
        topology, "/images/local", {"ref": image}, lambda body: list(body["apps"])
    )
    for answer in answers:
        apps.update(answer)
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


# --- /dora -----------------------------------------------------------------------------------


class BadDoraQuery(ValueError):
    """A ``/dora`` query the API refuses (400); the message says why."""


@dataclass(frozen=True, slots=True)
class DoraQuery:
    """What a ``/dora`` request asks: one app (``ns/name``) or one project, over
    ``[since, until)`` (``since`` ``None``: all time). Times are UTC, whole milliseconds."""

    app: str | None
    project: str | None
    since: datetime | None
    until: datetime

    def subject(self) -> dict[str, str]:
        """The answer's first field: ``{"app": ...}`` or ``{"project": ...}``."""
        if self.app is not None:
            return {"app": self.app}
        return {"project": self.project or ""}

    def peer_params(self) -> dict[str, str]:
        """The parameters of ``/dora/local`` for this (project) query: the same range, with
        ``until`` fixed by the worker asked, so that every part counts the same deployments."""
        params = {"project": self.project or "", "until": timestamps.format_datetime(self.until)}
        if self.since is not None:
            params["since"] = timestamps.format_datetime(self.since)
        return params


def _whole_ms(moment: datetime) -> datetime:
    """``moment`` in UTC, truncated to the millisecond (as ``timestamps`` writes times)."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _time_param(params: Mapping[str, str], name: str) -> datetime | None:
    if name not in params:
        return None
    value = params[name]
    parsed = timestamps.parse(value)
    if parsed is None:
        raise BadDoraQuery(
            f"{name}={value!r} is not an RFC 3339 time, e.g. 2026-11-01T00:00:00Z "
            "(in a URL, write an offset's + as %2B)"
        )
    return _whole_ms(parsed)


def _app_key(app: str, default_namespace: str) -> str:
    """``ns/name`` of the ``app`` parameter (a bare name: in the default namespace)."""
    parts = app.split("/")
    if len(parts) == 1:
        parts = [default_namespace, app]
    if len(parts) != 2 or not all(parts):
        raise BadDoraQuery(f"app={app!r} is not <namespace>/<name>")
    return "/".join(parts)


def dora_query(params: Mapping[str, str], *, now: datetime, default_namespace: str) -> DoraQuery:
    """The query of ``/dora``'s parameters (``app`` or ``project``, ``since``, ``until``, which
    defaults to ``now``); raises :class:`BadDoraQuery` with the reason the API answers 400."""
    app, project = params.get("app", ""), params.get("project", "")
    if bool(app) == bool(project):
        raise BadDoraQuery("give exactly one of app=<namespace>/<name> or project=<project>")
    since = _time_param(params, "since")
    until = _time_param(params, "until") or _whole_ms(now)
    if since is not None and since >= until:
        raise BadDoraQuery(
            f"since ({timestamps.format_datetime(since)}) must be before until "
            f"({timestamps.format_datetime(until)})"
        )
    key = _app_key(app, default_namespace) if app else None
    return DoraQuery(app=key, project=project or None, since=since, until=until)


def no_deployments(query: DoraQuery) -> str:
    """The 404's message: names the app or the project asked about."""
    if query.app is not None:
        return f"no deployment recorded for app {query.app!r}"
    return f"no deployment recorded for any app of project {query.project!r}"


def dora_answer(
    query: DoraQuery, keys: dora.Keys, incomplete: Sequence[str] = ()
) -> tuple[int, dict[str, Any]]:
    """The status and body of ``GET /dora`` (docs/dora.md, "The query API"): 206 with the
    peers that did not answer in ``"incomplete"`` when there are any."""
    body: dict[str, Any] = {**query.subject(), **keys.as_json()}
    if incomplete:
        body["incomplete"] = sorted(incomplete)
    return (206 if incomplete else 200), body


def app_dora(query: DoraQuery, state: Mapping[str, Any], failure_window_s: float) -> dora.Keys:
    """The keys of the app whose stored state is ``state`` (its DORA history is under
    ``"dora"``); raises :class:`dora.NoDeployments` when it has none."""
    return dora.keys(
        [state.get("dora")],
        query.since,
        query.until,
        now=query.until,
        failure_window_s=failure_window_s,
    )


def project_part(
    raws: Iterable[bytes], owned: Set[int], query: DoraQuery, failure_window_s: float
) -> dora.Partial:
    """``dora.partial`` over the DORA histories of project ``query.project``'s apps among the
    serialized states ``raws`` whose partition is in ``owned`` (what ``/dora/local`` answers)."""
    histories = (  # one at a time: thousands of decoded histories kept would make work for the GC
        state.get("dora")
        for state in decoded_states(raws)
        if state.get("partition") in owned and state.get("project") == query.project
    )
    return dora.partial(
        histories, query.since, query.until, now=query.until, failure_window_s=failure_window_s
    )


async def local_dora_part(topology: Topology, query: DoraQuery) -> dora.Partial:
    """:func:`project_part` of this worker's partitions, decoded and computed in a thread: a
    project of thousands of apps takes seconds, which the event loop must not wait for."""
    raws = topology.apps.raw_states(b'"project":' + orjson.dumps(query.project))
    return await asyncio.to_thread(
        project_part,
        raws,
        topology.assigned_partitions(),
        query,
        topology.settings.dora_failure_window,
    )


def _read_part(body: Any) -> dict[str, Any]:
    """A peer's ``/dora/local`` answer's part, checked to hold what ``dora.combine`` reads."""
    part = body["partial"]
    if not isinstance(part, dict) or not dora.Partial.__required_keys__ <= part.keys():
        raise ValueError(f"not a dora.partial: {part!r:.200}")
    return part


async def project_dora(topology: Topology, query: DoraQuery) -> tuple[dora.Keys | None, list[str]]:
    """The keys of project ``query.project`` over every worker's apps (``None`` when no answer
    holds a deployment), and the peers that did not answer."""
    local, (answers, failed) = await asyncio.gather(
        local_dora_part(topology, query),
        ask_peers(topology, "/dora/local", query.peer_params(), _read_part),
    )
    try:
        keys = dora.combine(
            [local, *answers],
            query.since,
            query.until,
            now=query.until,
            failure_window_s=topology.settings.dora_failure_window,
        )
    except dora.NoDeployments:
        return None, failed
    return keys, failed


def _register_dora_views(topology: Topology) -> None:
    """``GET /dora?app=|project=`` and ``GET /dora/local?project=`` (this worker's part)."""
    app = topology.app
    settings = topology.settings

    def query_of(view: View, request: Request) -> DoraQuery | Response:
        try:
            return dora_query(
                request.query,
                now=datetime.now(UTC),
                default_namespace=settings.default_app_namespace,
            )
        except BadDoraQuery as exc:
            return view.error(400, str(exc))

    async def of_app(view: View, request: Request, query: DoraQuery, key: str) -> Response:
        if (elsewhere := await _at_owner(topology, view, request, key)) is not None:
            return elsewhere
        state = topology.apps.app_state(key)
        try:
            keys = app_dora(query, state or {}, settings.dora_failure_window)
        except dora.NoDeployments:
            return view.notfound(no_deployments(query), app=key)
        status, body = dora_answer(query, keys)
        return view.json(body, status=status)

    async def of_project(view: View, query: DoraQuery, project: str) -> Response:
        if not _tables_ready(app):
            return _recovering(view)
        keys, failed = await project_dora(topology, query)
        if keys is None and failed:  # the project's apps may all be on the missing workers
            reason = f"{no_deployments(query)} on the workers that answered; retry shortly"
            return view.error(503, reason, project=project, incomplete=sorted(failed))
        if keys is None:
            return view.notfound(no_deployments(query), project=project)
        status, body = dora_answer(query, keys, failed)
        return view.json(body, status=status)

    @app.page("/dora/local")
    class LocalDoraView(View):
        async def get(self, request: Request) -> Response:
            query = query_of(self, request)
            if not isinstance(query, DoraQuery):
                return query
            if query.project is None:
                return self.error(400, "/dora/local answers for a project: give project=<p>")
            if not _tables_ready(app):
                return _recovering(self)
            part = await local_dora_part(topology, query)
            return self.json({"project": query.project, "partial": part})

    @app.page("/dora")
    class DoraView(View):
        async def get(self, request: Request) -> Response:
            query = query_of(self, request)
            if not isinstance(query, DoraQuery):
                return query
            if query.app is not None:
                return await of_app(self, request, query, query.app)
            return await of_project(self, query, query.project or "")


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
