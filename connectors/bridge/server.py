"""``synctrail bridge``: the HTTP receiver for Argo CD webhooks (aiohttp).

Routes (the whole contract is docs/contract-http.md)::

    POST /v1/sync                          envelope body
    POST /v1/sync/{app}                    bare syncResult, app namespace from the settings
    POST /v1/sync/{app_namespace}/{app}    bare syncResult
    GET  /healthz  /readyz  /metrics

A request is checked in the cheapest order: credentials, declared content type, route
identity, declared size, then the body is read with a cap and a deadline, parsed and validated, turned into one sync-event record and handed
to the :class:`~connectors.bridge.delivery.Dispatcher`, which answers once Kafka acknowledged
it or the spool made it durable. Slow clients are bounded by
:mod:`connectors.bridge.connections` (the request head's deadline, the connection bound) and by
``read_body`` (the body's deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.bridge.auth import CHALLENGE, Authenticator
from connectors.bridge.connections import ConnectionGuard, default_max_connections
from connectors.bridge.delivery import Dispatcher, Outcome
from connectors.bridge.events import (
    bare_event,
    envelope_event,
    event_key,
    new_delivery_id,
)
from connectors.bridge.metrics import BridgeMetrics
from connectors.bridge.settings import BridgeConfigError, BridgeSettings
from connectors.bridge.spool import Spool, SpoolError, SpoolInUse
from connectors.bridge.validation import (
    Rejection,
    check_bare,
    check_envelope,
    check_identity_keys_unique,
    check_route_identity,
    parse_json_object,
)
from streams import logs
from streams.domain import timestamps
from streams.event_loop import loop_name, uvloop_if_wanted

log = logging.getLogger(__name__)

ROUTE_ENVELOPE = "/v1/sync"
ROUTE_BARE = "/v1/sync/{app}"
ROUTE_BARE_NS = "/v1/sync/{app_namespace}/{app}"
_SYNC_ROUTES = frozenset({ROUTE_ENVELOPE, ROUTE_BARE, ROUTE_BARE_NS})
# The route label of requests for a path the bridge does not serve (404) or with a method the
# path does not take (405): raw paths never become labels.
UNMATCHED = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GC_YOUNG_THRESHOLD = 20_000


@dataclass
class Bridge:
    """Everything one running bridge holds; ``app[BRIDGE]`` in handlers and tests."""

    settings: BridgeSettings
    metrics: BridgeMetrics
    spool: Spool
    dispatcher: Dispatcher
    auth: Authenticator
    #: Set by :func:`serve`: in-process test servers run without it.
    guard: ConnectionGuard | None = None


BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge", Bridge)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A compact JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _observed(bridge: Bridge, route: str, handler: Handler) -> Handler:
    """``handler`` counted and timed under the label ``route``; a Rejection becomes its answer.

    A wrapper per route rather than a middleware: aiohttp runs a middleware through two more
    coroutines per request, and here the route template is known without looking it up.
    """
    sync_route = route in _SYNC_ROUTES
    metrics = bridge.metrics

    async def observed(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        guard = bridge.guard
        if guard is not None:
            guard.request_started(request.transport)
        try:
            response = await handler(request)
            status = response.status
            return response
        except Rejection as rej:
            status = rej.status
            if sync_route:
                metrics.rejected.inc()
            log.info(
                "delivery rejected",
                extra={"route": route, "status": rej.status, "reason": rej.message[:300]},
            )
            headers = {"WWW-Authenticate": CHALLENGE} if rej.status == 401 else None
            answer = json_response(
                {"error": rej.message, "problems": rej.problems}, rej.status, headers=headers
            )
            if rej.status == 408:
                metrics.connections_closed.labels("body_timeout").inc()
                # Answer now and close: aiohttp would otherwise go on reading the late body
                # for its lingering time (10 s) before closing the connection.
                answer.force_close()
                await answer.prepare(request)
                await answer.write_eof()
                if guard is not None:
                    guard.close_after_answer(request.transport)
                else:
                    request.protocol.force_close()
            return answer
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.request_done(route, status, time.perf_counter() - started)
            if guard is not None:
                guard.request_finished(request.transport, request.content.at_eof())

    return observed


async def not_found(request: web.Request) -> web.StreamResponse:
    """Any path no route serves: aiohttp's own 404, counted under ``route="unmatched"``."""
    raise web.HTTPNotFound()


async def method_not_allowed(request: web.Request) -> web.StreamResponse:
    """A served path with another method: aiohttp's own 405 with the path's ``Allow`` list."""
    resource = request.match_info.route.resource
    allowed = {r.method for r in resource or () if r.method != hdrs.METH_ANY}
    raise web.HTTPMethodNotAllowed(request.method, allowed)


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing anything over ``limit`` (413) without buffering it all, or
    not received within ``timeout_s`` (408)."""
    if request.content.is_eof():  # all of it arrived with the head: nothing to wait for
        return await _read_capped(request, limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_capped(request, limit)
    except TimeoutError:
        raise Rejection(
            408,
            f"request body not received within {timeout_s:g}s (SYNCTRAIL_BRIDGE_BODY_TIMEOUT_S)",
        ) from None


async def _read_capped(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Rejection(413, _too_large(f"{declared} bytes", limit))
    if declared is not None:
        return await request.read()  # bounded: client_max_size is the limit
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, _too_large(f"more than {limit} bytes", limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, limit: int) -> str:
    return f"body too large: {size}; the limit is {limit} bytes (SYNCTRAIL_BRIDGE_MAX_BODY_BYTES)"


def _check_content_type(request: web.Request) -> None:
    """415 unless the body is declared as JSON (or not declared at all)."""
    declared = request.headers.get(hdrs.CONTENT_TYPE)
    if declared is not None and request.content_type != "application/json":
        raise Rejection(
            415,
            f"Content-Type header: {declared!r} is not JSON; send "
            "`Content-Type: application/json` (a charset parameter is fine)",
        )


def _authorize(bridge: Bridge, request: web.Request) -> None:
    if not bridge.auth.allows(request.headers.get("Authorization")):
        raise Rejection(
            401,
            "missing or wrong credentials: send `Authorization: Bearer <token>` "
            "(SYNCTRAIL_BRIDGE_TOKENS) or HTTP Basic (SYNCTRAIL_BRIDGE_BASIC_AUTH)",
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """A validated delivery, ready to publish: its Kafka key and serialised sync-event.

    The handlers parse, check and serialise in :func:`accept_envelope` and :func:`accept_bare`,
    so the parsed body and the event (hundreds of objects each) are freed before the request
    waits for Kafka instead of being held by every request in flight for that wait. (An A/B run
    against handlers that kept them was within the machine's noise: at most 4 %.)
    """

    key: str
    delivery_id: str
    value: bytes
    #: the event's ``received_at``: with ``delivery_id``, its CloudEvents identity and time
    received_at: str | None = None

    @classmethod
    def of(cls, event: dict[str, Any]) -> Accepted:
        """The record of a sync-event built by :mod:`connectors.bridge.events`."""
        return cls(
            event_key(event),
            event["delivery_id"],
            orjson.dumps(event),
            event.get("received_at"),
        )


def accept_envelope(raw: bytes, default_namespace: str) -> Accepted:
    """Parse and check an envelope body and turn it into its record (or raise Rejection)."""
    body = parse_json_object(raw)
    check_identity_keys_unique(raw)
    check_envelope(body)
    event = envelope_event(
        body,
        raw,
        default_namespace=default_namespace,
        delivery_id=new_delivery_id(),
        received_at=timestamps.now(),
    )
    return Accepted.of(event)


def accept_bare(raw: bytes, namespace: str, name: str) -> Accepted:
    """Parse and check a bare syncResult body and turn it into its record (or raise
    Rejection)."""
    body = parse_json_object(raw)
    check_identity_keys_unique(raw)
    check_bare(body)
    event = bare_event(
        body,
        raw,
        namespace=namespace,
        name=name,
        delivery_id=new_delivery_id(),
        received_at=timestamps.now(),
    )
    return Accepted.of(event)


async def post_envelope(request: web.Request) -> web.Response:
    """``POST /v1/sync``: an envelope body."""
    bridge = request.app[BRIDGE]
    _authorize(bridge, request)
    _check_content_type(request)
    settings = bridge.settings
    raw = await read_body(request, settings.bridge_max_body_bytes, settings.bridge_body_timeout_s)
    bridge.metrics.body_bytes.observe(len(raw))
    return await _publish(bridge, accept_envelope(raw, bridge.settings.default_app_namespace))


async def post_bare(request: web.Request) -> web.Response:
    """``POST /v1/sync/{app}`` and ``/v1/sync/{app_namespace}/{app}``: a bare syncResult."""
    bridge = request.app[BRIDGE]
    _authorize(bridge, request)
    _check_content_type(request)
    settings = bridge.settings
    namespace = request.match_info.get("app_namespace") or settings.default_app_namespace
    name = request.match_info["app"]
    check_route_identity(namespace, name)
    raw = await read_body(request, settings.bridge_max_body_bytes, settings.bridge_body_timeout_s)
    bridge.metrics.body_bytes.observe(len(raw))
    return await _publish(bridge, accept_bare(raw, namespace, name))


async def _publish(bridge: Bridge, accepted: Accepted) -> web.Response:
    key = accepted.key
    try:
        dispatcher = bridge.dispatcher
        headers = dispatcher.headers_of(key, accepted.delivery_id, accepted.received_at)
        outcome: Outcome = await dispatcher.deliver(key.encode(), accepted.value, headers)
    except SpoolError as exc:
        bridge.metrics.rejected.inc()
        log.error(
            "delivery refused: kafka unreachable and spool unusable",
            extra={"app": key, "delivery_id": accepted.delivery_id, "error": str(exc)},
        )
        return json_response(
            {
                "error": f"kafka is unreachable and the spool cannot take the delivery: {exc}",
                "problems": [str(exc)],
            },
            503,
            headers={"Retry-After": str(bridge.settings.bridge_retry_after_s)},
        )
    (bridge.metrics.spooled if outcome.spooled else bridge.metrics.published).inc()
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "delivery accepted",
            extra={
                "app": key,
                "delivery_id": accepted.delivery_id,
                "spooled": outcome.spooled,
                "partition": outcome.partition,
                "offset": outcome.offset,
            },
        )
    return json_response(
        {
            "delivery_id": accepted.delivery_id,
            "topic": outcome.topic,
            "partition": outcome.partition,
            "offset": outcome.offset,
            "spooled": outcome.spooled,
        },
        202,
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: deliveries can be accepted (Kafka reachable or spool writable)."""
    bridge = request.app[BRIDGE]
    spool = bridge.spool
    broker_up = bridge.dispatcher.broker_up
    ready = broker_up or spool.writable
    return json_response(
        {
            "ready": ready,
            "broker": "up" if broker_up else "down",
            "broker_error": bridge.dispatcher.last_broker_error,
            "spool": {
                "records": spool.records,
                "bytes": spool.bytes,
                "disk_bytes": spool.disk_bytes,
                "max_bytes": spool.max_bytes,
                "writable": spool.writable,
                "error": spool.error,
            },
        },
        200 if ready else 503,
    )


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text exposition of this bridge's registry."""
    bridge = request.app[BRIDGE]
    body = generate_latest(bridge.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(settings: BridgeSettings) -> web.Application:
    """The bridge as an aiohttp application; Kafka and the spool start with the app.

    Raises :class:`BridgeConfigError` when no credentials are configured and anonymous
    access was not asked for.
    """
    settings.check()
    metrics = BridgeMetrics()
    spool = Spool(
        settings.bridge_spool_dir,
        settings.bridge_spool_max_bytes,
        settings.bridge_spool_segment_bytes,
    )
    metrics.watch_spool(lambda: spool.records, lambda: spool.bytes)
    bridge = Bridge(
        settings=settings,
        metrics=metrics,
        spool=spool,
        dispatcher=Dispatcher(settings, spool, metrics),
        auth=Authenticator(
            settings.token_list(), settings.basic_credentials(), settings.bridge_allow_anonymous
        ),
    )
    # aiohttp's own limit only guards request.read(); read_body enforces ours first.
    app = web.Application(client_max_size=settings.bridge_max_body_bytes + 1)
    app[BRIDGE] = bridge
    routes: list[tuple[str, str, Handler]] = [
        (hdrs.METH_POST, ROUTE_ENVELOPE, post_envelope),
        (hdrs.METH_POST, ROUTE_BARE, post_bare),
        (hdrs.METH_POST, ROUTE_BARE_NS, post_bare),
        (hdrs.METH_GET, "/healthz", healthz),
        (hdrs.METH_GET, "/readyz", readyz),
        (hdrs.METH_GET, "/metrics", metrics_view),
    ]
    unmatched = _observed(bridge, UNMATCHED, method_not_allowed)
    for method, path, handler in routes:
        app.router.add_route(method, path, _observed(bridge, path, handler))
        if method == hdrs.METH_GET:
            app.router.add_route(hdrs.METH_HEAD, path, _observed(bridge, path, handler))
        # Every other method of a served path: tried after the routes above, so only those
        # requests pay for it, and every request is counted without a middleware.
        app.router.add_route(hdrs.METH_ANY, path, unmatched)
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", _observed(bridge, UNMATCHED, not_found))
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> Any:
    bridge = app[BRIDGE]
    bridge.spool.open()
    await bridge.dispatcher.start()
    log.info(
        "bridge started",
        extra={
            "bootstrap": bridge.settings.kafka_bootstrap,
            "topic": bridge.dispatcher.topic,
            "broker": "up" if bridge.dispatcher.broker_up else "down",
            "spool_dir": str(bridge.settings.bridge_spool_dir),
            "spool_records": bridge.spool.records,
        },
    )
    yield
    # In-flight requests are finished by now; what is still spooled stays spooled.
    await bridge.dispatcher.stop()
    log.info("bridge stopped", extra={"spool_records": bridge.spool.records})


async def serve(settings: BridgeSettings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT: then stop accepting, finish in-flight requests, flush."""
    app = create_app(settings)
    bridge = app[BRIDGE]
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.bridge_shutdown_timeout_s,
        keepalive_timeout=settings.bridge_keepalive_s,
    )
    await runner.setup()
    assert runner.server is not None
    closed = bridge.metrics.connections_closed
    guard = bridge.guard = ConnectionGuard(
        runner.server,
        head_timeout_s=settings.bridge_head_timeout_s,
        max_connections=settings.bridge_max_connections or default_max_connections(),
        on_close=lambda reason: closed.labels(reason).inc(),
    )
    bridge.metrics.connections.set_function(lambda: guard.open_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listener: asyncio.Server | None = None
    try:
        # aiohttp's protocol factory behind the guard, instead of a TCPSite over it
        listener = await loop.create_server(
            guard, settings.bridge_host, settings.bridge_port, backlog=1024, reuse_address=True
        )
        # Everything allocated so far lives for the whole run: keep it out of GC passes,
        # which otherwise rescan it every few hundred requests.
        gc.collect()
        gc.freeze()
        # A request's objects die by reference counting when it is answered, so young-object
        # passes only rescan the requests in flight: at the default threshold (700) they ran
        # every ~50 requests under load, ~5 µs a request. This one stays above the objects of
        # a few hundred requests in flight; the bridge makes little cyclic garbage.
        gc.set_threshold(GC_YOUNG_THRESHOLD)
        log.info(
            "bridge listening",
            extra={
                "url": settings.base_url(),
                "event_loop": loop_name(loop),
                "max_connections": guard.max_connections,
            },
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: finishing in-flight requests")
    finally:
        if listener is not None:
            listener.close()  # no new connections; the runner finishes the open ones
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``synctrail bridge``."""
    settings = BridgeSettings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        settings.check()
    except BridgeConfigError as exc:
        log.error("bridge refuses to start", extra={"reason": str(exc)})
        print(f"synctrail bridge: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop = uvloop_if_wanted(settings.bridge_event_loop, "SYNCTRAIL_BRIDGE_EVENT_LOOP")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
            runner.run(serve(settings))
    except SpoolInUse as exc:
        log.error("bridge refuses to start", extra={"reason": str(exc)})
        print(f"synctrail bridge: {exc}", file=sys.stderr)
        return 2
    return 0
