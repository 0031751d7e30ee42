"""A local Slack-compatible server for tests: the real slack-sdk client talks to it.

It implements what synctrail uses: ``chat.postMessage``, ``conversations.history`` and
``conversations.replies`` (message metadata only with ``include_all_metadata``), ``auth.test``
and an incoming-webhook path. Every call is recorded with a ``time.monotonic()`` arrival time,
so tests can measure pacing and ``Retry-After`` waits from the server's side. Failures are
scripted per method and consumed in call order (``Reply.normal()`` lets one call through)::

    server = SlackServer(token="xoxb-test")
    await server.start()
    server.script("chat.postMessage", Reply.rate_limited(2), Reply.server_error())
    ...  # point AsyncWebClient(base_url=server.api_url) or SYNCTRAIL_SLACK_API_URL at it
    server.posts()  # messages Slack "has"
    await server.stop()

``Reply.accepted_then(...)`` records the message as posted and still answers with a failure
(a response lost on the way back); ``Reply.hang()`` records it and never answers, so a test can
kill the client between Slack's acceptance and the client's bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WEBHOOK_PATH = "/services/T0000TEST/B0000TEST/webhooksecret"
WEBHOOK_CHANNEL = "#webhook"


@dataclass(frozen=True)
class Reply:
    """One scripted answer; ``accept`` records the message as posted before answering."""

    status: int = 200
    body: Any = None  # dict → JSON, str → text/plain
    headers: dict[str, str] = field(default_factory=dict)
    accept: bool = False
    hangs: bool = False

    @staticmethod
    def normal() -> Reply:
        """Answer this call as a healthy Slack would (a placeholder in a script)."""
        return Reply(status=0)

    @staticmethod
    def rate_limited(retry_after: float) -> Reply:
        """429 with ``Retry-After`` (whole seconds, as Slack sends it, unless given a float)."""
        value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        return Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": value})

    @staticmethod
    def server_error(status: int = 500) -> Reply:
        """A 5xx with a non-JSON body, as a proxy in front of Slack would send."""
        return Reply(status, "upstream failure")

    @staticmethod
    def error(code: str, status: int = 200) -> Reply:
        """Slack's ``{"ok": false, "error": code}`` (HTTP 200 for the Web API)."""
        return Reply(status, {"ok": False, "error": code})

    @staticmethod
    def webhook_error(code: str, status: int = 403) -> Reply:
        """An incoming webhook's error: a status and the error word as text."""
        return Reply(status, code)

    @staticmethod
    def accepted_then(reply: Reply) -> Reply:
        """Record the message as posted, then answer with ``reply`` (a lost response)."""
        return Reply(reply.status, reply.body, reply.headers, accept=True)

    @staticmethod
    def hang() -> Reply:
        """Record the message as posted and never answer (until the server stops)."""
        return Reply(accept=True, hangs=True)


@dataclass
class Call:
    """One request as the server saw it."""

    method: str
    at: float  # time.monotonic() on arrival
    params: dict[str, Any]
    status: int = 0
    error: str | None = None


@dataclass
class Posted:
    """A message the server holds."""

    channel: str  # as the client named it
    channel_id: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None
    metadata: dict[str, Any] | None
    at: float  # monotonic

    @property
    def key(self) -> str | None:
        """The synctrail idempotency key in the metadata, if any."""
        payload = (self.metadata or {}).get("event_payload") or {}
        return payload.get("idempotency_key")

    def as_slack(self, with_metadata: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.blocks:
            message["blocks"] = self.blocks
        if self.thread_ts:
            message["thread_ts"] = self.thread_ts
        if with_metadata and self.metadata:
            message["metadata"] = self.metadata
        return message


def channel_id(channel: str) -> str:
    """A stable Slack-like id for a channel name; ids (``C…``) map to themselves."""
    if channel[:1] in ("C", "G") and channel.isalnum() and channel.isupper():
        return channel
    return "C" + hashlib.sha1(channel.encode()).hexdigest()[:10].upper()


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


class SlackServer:
    """The server; start it in the test's event loop."""

    def __init__(self, token: str | None = "xoxb-test-token") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.messages: list[Posted] = []
        self._script: dict[str, deque[Reply]] = defaultdict(deque)
        self._limited: dict[str, Reply] = {}  # channel → the 429 every post to it gets
        self._release = asyncio.Event()
        self._last_ts = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> SlackServer:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post(WEBHOOK_PATH, self._webhook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Release hanging requests and stop listening."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        """Base URL for ``AsyncWebClient(base_url=...)`` / ``SYNCTRAIL_SLACK_API_URL``."""
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        """An incoming-webhook URL for ``SYNCTRAIL_SLACK_WEBHOOK_URL``."""
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    # ------------------------------------------------------------------ test API

    def script(self, method: str, *replies: Reply) -> None:
        """Queue answers for the next calls of ``method`` (``webhook`` for the webhook)."""
        self._script[method].extend(replies)

    def rate_limit_channel(self, channel: str, retry_after: float) -> None:
        """Answer every ``chat.postMessage`` to ``channel`` (as the client names it) with 429
        and ``Retry-After: retry_after``, whatever else is scripted."""
        self._limited[channel] = Reply.rate_limited(retry_after)

    def release_hangs(self) -> None:
        """Let hanging requests finish (with a 500)."""
        self._release.set()

    def posts(self, channel: str | None = None) -> list[Posted]:
        """Messages posted, optionally to one channel (name or id)."""
        if channel is None:
            return list(self.messages)
        cid = channel_id(channel)
        return [m for m in self.messages if m.channel_id == cid]

    def calls_to(self, method: str) -> list[Call]:
        """Recorded calls of one method, in arrival order."""
        return [c for c in self.calls if c.method == method]

    # ------------------------------------------------------------------ handlers

    def _next_ts(self) -> str:
        self._last_ts = max(self._last_ts + 0.000001, time.time())
        return f"{self._last_ts:.6f}"

    def _record_post(self, params: dict[str, Any], channel: str) -> Posted:
        blocks = params.get("blocks") or []
        if isinstance(blocks, str):
            blocks = orjson.loads(blocks)
        metadata = params.get("metadata")
        if isinstance(metadata, str):
            metadata = orjson.loads(metadata)
        posted = Posted(
            channel=channel,
            channel_id=channel_id(channel),
            ts=self._next_ts(),
            text=str(params.get("text") or ""),
            blocks=list(blocks),
            thread_ts=params.get("thread_ts"),
            metadata=metadata,
            at=time.monotonic(),
        )
        self.messages.append(posted)
        return posted

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    async def _scripted(
        self, method: str, call: Call, params: dict[str, Any], channel: str | None
    ) -> web.Response | None:
        if not self._script[method]:
            return None
        reply = self._script[method].popleft()
        if reply.status == 0:
            return None
        if reply.accept and channel is not None:
            self._record_post(params, channel)
        if reply.hangs:
            await self._release.wait()
            reply = Reply.server_error()
        return self._reply(call, reply)

    def _reply(self, call: Call, reply: Reply) -> web.Response:
        call.status = reply.status
        if isinstance(reply.body, dict):
            call.error = reply.body.get("error")
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        call.error = str(reply.body)
        return web.Response(text=str(reply.body or ""), status=reply.status, headers=reply.headers)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, time.monotonic(), params)
        self.calls.append(call)
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            if not auth:
                return self._answer(call, {"ok": False, "error": "not_authed"})
            if auth != f"Bearer {self.token}":
                return self._answer(call, {"ok": False, "error": "invalid_auth"})
        channel = str(params.get("channel") or "") or None
        if method == "chat.postMessage" and channel in self._limited:
            return self._reply(call, self._limited[channel])
        scripted = await self._scripted(
            method, call, params, channel if method == "chat.postMessage" else None
        )
        if scripted is not None:
            return scripted
        if method == "auth.test":
            return self._answer(
                call,
                {
                    "ok": True,
                    "team": "synctrail-test",
                    "user": "synctrail",
                    "team_id": "T0000TEST",
                    "user_id": "U0000TEST",
                },
            )
        if method == "chat.postMessage":
            if not channel:
                return self._answer(call, {"ok": False, "error": "channel_not_found"})
            if not params.get("text") and not params.get("blocks"):
                return self._answer(call, {"ok": False, "error": "no_text"})
            posted = self._record_post(params, channel)
            return self._answer(
                call,
                {
                    "ok": True,
                    "channel": posted.channel_id,
                    "ts": posted.ts,
                    "message": posted.as_slack(True),
                },
            )
        if method in ("conversations.history", "conversations.replies"):
            return self._answer(call, self._history(method, params))
        return self._answer(call, {"ok": False, "error": "unknown_method"})

    def _history(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        cid = channel_id(channel)
        oldest = float(params.get("oldest") or 0)
        limit = int(params.get("limit") or 100)
        with_metadata = _truthy(params.get("include_all_metadata"))
        in_channel = [m for m in self.messages if m.channel_id == cid and float(m.ts) >= oldest]
        if method == "conversations.replies":
            parent = str(params.get("ts") or "")
            found = [m for m in in_channel if m.ts == parent or m.thread_ts == parent]
            found.sort(key=lambda m: float(m.ts))  # replies: oldest first, parent first
        else:
            found = [m for m in in_channel if not m.thread_ts or m.thread_ts == m.ts]
            found.sort(key=lambda m: float(m.ts), reverse=True)  # history: newest first
        return {
            "ok": True,
            "channel": cid,
            "messages": [m.as_slack(with_metadata) for m in found[:limit]],
            "has_more": len(found) > limit,
        }

    def _answer(self, call: Call, body: dict[str, Any], status: int = 200) -> web.Response:
        call.status = status
        call.error = body.get("error")
        return web.json_response(body, status=status)

    async def _webhook(self, request: web.Request) -> web.Response:
        params = await request.json()
        call = Call("webhook", time.monotonic(), params)
        self.calls.append(call)
        scripted = await self._scripted("webhook", call, params, WEBHOOK_CHANNEL)
        if scripted is not None:
            return scripted
        if not params.get("text") and not params.get("blocks"):
            call.status, call.error = 400, "no_text"
            return web.Response(text="no_text", status=400)
        self._record_post(params, WEBHOOK_CHANNEL)
        call.status = 200
        return web.Response(text="ok")
