"""Deadlines and a bound for the bridge's client connections, below aiohttp.

aiohttp closes a connection that sends nothing (its keep-alive timeout, which also runs from
the moment a connection opens), but it has no deadline for a request's head: a client that
sends a byte of its request line every few seconds, or headers that never end, holds its
connection and a file descriptor forever. Enough of them exhaust the process's open-file limit
and every real delivery fails. This module closes that gap without touching aiohttp's
internals: :class:`ConnectionGuard` wraps the protocol factory of aiohttp's public
``runner.server`` and watches each connection's bytes from the outside.

A connection is in one of three states:

``idle``
    no request under way: aiohttp's keep-alive timeout (``SYNCTRAIL_BRIDGE_KEEPALIVE_S``)
    closes it;
``head``
    the first byte of a request arrived and the handler has not started: the request line and
    headers must be complete within ``SYNCTRAIL_BRIDGE_HEAD_TIMEOUT_S``, or the client gets
    ``408`` and the connection is closed;
Deadlines are held by one sweep over the open connections every ``min(1 s, head timeout / 4)``
(a connection closes up to that much after its deadline), not by a timer per request.

``busy``
    a handler runs; the body's deadline is the handler's (``read_body`` in
    :mod:`connectors.bridge.server`, ``SYNCTRAIL_BRIDGE_BODY_TIMEOUT_S``);
``draining``
    the handler answered without reading the whole body (a 401, 413 or 408): aiohttp reads and
    drops the rest for up to its lingering time before the next request, so bytes arriving now
    are not a new request's head. The connection is closed silently if it is still in this
    state after the head deadline plus that lingering time.
``closing``
    a 408 was written: our side is shut (FIN), what the client still sends is dropped, and the
    connection is aborted after :data:`CLOSE_LINGER_S` (closing at once could make the kernel
    answer the client's late bytes with a reset that destroys the 408 before it is read).

At most ``max_connections`` are open at once (by default the open-file limit less a reserve for
Kafka, the spool and the process itself). A connection arriving at the bound takes the place
of the oldest one that is not running a handler (idle or still sending its head): slow and
abusive clients are shed first, and a real delivery, whose head arrives at once, is refused
only when every open connection is running a handler.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Descriptors kept free of client connections: Kafka connections, spool segments, the
#: listening socket, logs, imports.
FD_RESERVE = 256
_LOG_EVERY_S = 60.0
_LOG_MEMORY = 10_000
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)

IDLE, HEAD, BUSY, DRAINING, CLOSING = "idle", "head", "busy", "draining", "closing"
#: After a 408, how long the connection stays half-open (our side shut) while what the client
#: still sends is read and dropped: closing at once would make the kernel answer that data with
#: a reset, which can destroy the 408 before the client reads it.
CLOSE_LINGER_S = 2.0
#: aiohttp's ``lingering_time`` default: how long it drains a body its handler did not read.
AIOHTTP_LINGERING_S = 10.0


def default_max_connections(reserve: int = FD_RESERVE) -> int:
    """The open-file limit of this process less ``reserve`` (at least 64)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(64, soft - reserve)


class ConnectionGuard:
    """A protocol factory around aiohttp's, enforcing the head deadline and the bound.

    ``on_close(reason)`` is called once for every connection the guard closes, with reason
    ``head_timeout`` or ``shed``.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        head_timeout_s: float,
        max_connections: int,
        on_close: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.factory = factory
        self.head_timeout_s = head_timeout_s
        self.max_connections = max_connections
        self.on_close = on_close
        # insertion order: the first entries are the oldest connections
        self._open: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self._logged: dict[tuple[str, str], float] = {}
        # One periodic sweep checks every deadline, rather than a timer per request (creating
        # and cancelling one on every request cost the bridge's hot path a few microseconds).
        self.sweep_every_s = min(1.0, head_timeout_s / 4)
        self._sweeping = False

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self, self.factory())

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def request_started(self, transport: Any) -> None:
        """A handler runs for a request on ``transport``: its head arrived in time."""
        guarded = self._open.get(transport)
        if guarded is not None and guarded.state != CLOSING:
            guarded.enter(BUSY)

    def close_after_answer(self, transport: Any) -> None:
        """The answer on ``transport`` is written and the connection must end (a 408)."""
        guarded = self._open.get(transport)
        if guarded is not None:
            guarded.linger()

    def request_finished(self, transport: Any, body_read: bool) -> None:
        """The handler of ``transport``'s request returned, having read all of its body or not."""
        guarded = self._open.get(transport)
        if guarded is not None and guarded.state != CLOSING:
            guarded.enter(IDLE if body_read else DRAINING)

    # -- called by GuardedProtocol ----------------------------------------------------------

    def _sweep(self) -> None:
        """Close every connection past its deadline, then schedule the next sweep."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        head, drain = self.head_timeout_s, self.head_timeout_s + AIOHTTP_LINGERING_S
        for guarded in list(self._open.values()):
            if guarded.state == HEAD and now - guarded.since >= head:
                guarded.head_expired()
            elif guarded.state == DRAINING and now - guarded.since >= drain:
                guarded.drain_expired()
        loop.call_later(self.sweep_every_s, self._sweep)

    def _opened(self, guarded: GuardedProtocol) -> bool:
        """Register a new connection; False when it must be refused (every slot is busy)."""
        if not self._sweeping:  # from the first connection on, in the serving loop
            self._sweeping = True
            asyncio.get_running_loop().call_later(self.sweep_every_s, self._sweep)
        if len(self._open) >= self.max_connections:
            victim = next((g for g in self._open.values() if g.state != BUSY), None)
            if victim is None:
                self._close(guarded, "shed")
                return False
            self._close(victim, "shed")
        self._open[guarded.transport] = guarded
        return True

    def _closed(self, guarded: GuardedProtocol) -> None:
        self._open.pop(guarded.transport, None)

    def _close(self, guarded: GuardedProtocol, reason: str) -> None:
        self.on_close(reason)
        self._log(guarded.peer, reason)
        if reason == "head_timeout":
            body = (
                b'{"error":"request head not received within %gs '
                b'(SYNCTRAIL_BRIDGE_HEAD_TIMEOUT_S)"}' % self.head_timeout_s
            )
            guarded.transport.write(_TIMEOUT_ANSWER % (len(body), body))  # type: ignore[attr-defined]
            guarded.linger()
        else:
            guarded.transport.abort()  # type: ignore[attr-defined]

    def _log(self, peer: str, reason: str) -> None:
        # once per client address and reason per minute: an attack must not flood the log
        now = time.monotonic()
        key = (peer, reason)
        if now - self._logged.get(key, -_LOG_EVERY_S) < _LOG_EVERY_S:
            return
        if len(self._logged) >= _LOG_MEMORY:
            self._logged.clear()
        self._logged[key] = now
        log.warning(
            "closing a client connection",
            extra={
                "client": peer,
                "reason": reason,
                "open_connections": len(self._open),
                "max_connections": self.max_connections,
            },
        )


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard watching its bytes."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.state = IDLE
        self.transport: asyncio.BaseTransport = None  # type: ignore[assignment]
        self.peer = "?"
        self.accepted = False
        self.since = 0.0  # loop time the current state began (its deadline runs from it)
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, state: str) -> None:
        """Move to ``state``; the guard's sweep holds ``head`` and ``draining`` to their
        deadlines from now."""
        self.state = state
        if self._loop is not None:
            self.since = self._loop.time()

    def linger(self) -> None:
        """Shut our side after the answer, drop what still arrives, abort after a moment."""
        self.enter(CLOSING)
        transport: Any = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(CLOSE_LINGER_S, transport.abort)

    def head_expired(self) -> None:
        """The request head is late: answer 408 and close (see the module docstring)."""
        if not self.transport.is_closing():
            self.guard._close(self, "head_timeout")

    def drain_expired(self) -> None:
        """aiohttp is still draining an unread body: close without an answer."""
        if not self.transport.is_closing():
            self.transport.abort()  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.accepted = self.guard._opened(self)
        if self.accepted:
            self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.accepted or self.state == CLOSING:
            return  # a refused or answered-and-closing connection: nothing more is read
        if self.state == IDLE:
            self.enter(HEAD)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.accepted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.enter(IDLE)
        if self.accepted:
            self.guard._closed(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.accepted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.accepted:
            self.inner.resume_writing()
