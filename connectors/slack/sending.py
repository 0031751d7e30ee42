"""Posting one message: the three ways out (Web API, incoming webhook, console) and the retries.

Every call to Slack ends as an ``Attempt`` with one of five outcomes; ``deliver`` turns attempts
into a ``Delivery`` (posted, or given up with a reason) under the retry policy:

* 429 → wait ``Retry-After`` (the channel is held in the pacer, so the wait is exact and
  visible), retry; all such waits of one message are bounded by ``rate_limit_max_wait``.
* 5xx, Slack's transient errors, network errors and timeouts → exponential backoff with jitter,
  at most ``max_attempts`` attempts. A timeout or a 5xx may hide a message Slack did accept, so
  before retrying, a sender that can read history looks for the message's idempotency key.
* anything else (``invalid_auth``, ``channel_not_found``, ``msg_too_long``…) is permanent:
  no retry.

slack-sdk's own retry handlers are switched off (``retry_handlers=[]``): retries happen here,
where they are paced, counted in metrics and bounded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from connectors.slack.console import format_message
from connectors.slack.pacing import ChannelPacer, backoff_delay, parse_retry_after

EVENT_TYPE = "synctrail_deploy"

Outcome = Literal["posted", "rate_limited", "server_error", "network", "permanent"]

# Slack error codes that say "try again later" rather than "this will never work".
TRANSIENT_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
)
# Permanent errors that deserve a hint in the one log line they produce.
HINTS: Mapping[str, str] = {
    "invalid_auth": "the token is not valid: check SYNCTRAIL_SLACK_TOKEN",
    "not_authed": "no token was sent: check SYNCTRAIL_SLACK_TOKEN",
    "token_revoked": "the token was revoked: install the app again",
    "account_inactive": "the token's user or bot was deactivated",
    "missing_scope": "the token lacks a scope (chat:write, channels:history)",
    "channel_not_found": "no such channel, or the bot cannot see it",
    "not_in_channel": "invite the bot to the channel (/invite @app)",
    "is_archived": "the channel is archived",
    "msg_too_long": "the message is too long for Slack",
    "invalid_blocks": "Slack rejected the Block Kit blocks",
}


@dataclass(frozen=True, slots=True)
class Message:
    """What to post: one notification, ready for Slack."""

    key: str  # idempotency key, sent as message metadata
    channel: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one call to Slack."""

    outcome: Outcome
    ts: str | None = None
    channel_id: str | None = None
    retry_after: float | None = None
    error: str = ""
    status: int | None = None


@dataclass(slots=True)
class Delivery:
    """The result of delivering one message, retries included."""

    posted: bool
    ts: str | None = None
    channel_id: str | None = None
    error: str = ""  # Slack's error code, or the last outcome
    reason: str = ""  # one sentence for the dead letter and the log
    attempts: int = 0
    found_existing: bool = False  # it had reached Slack already (found by its key)


class LookupFailed(Exception):
    """History could not be read, so whether a message was posted is unknown."""


class Sender(Protocol):
    """One way out to Slack."""

    mode: str
    can_find: bool  # can tell whether a key was posted already (reads history)
    supports_threads: bool

    async def check(self) -> str: ...

    async def post(self, message: Message) -> Attempt: ...

    async def find(
        self, key: str, channel: str, channel_id: str | None, thread_ts: str | None, since: float
    ) -> tuple[str, str | None] | None: ...

    async def close(self) -> None: ...


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is None and isinstance(headers, Mapping):
        lowered = {str(k).lower(): v for k, v in headers.items()}
        value = lowered.get(name.lower())
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


def classify_status(status: int | None, error: str, headers: Any) -> Attempt:
    """An ``Attempt`` for a failed HTTP answer: status, Slack error code, headers."""
    if status == 429 or error == "ratelimited":
        return Attempt(
            "rate_limited",
            retry_after=parse_retry_after(_header(headers, "Retry-After")),
            error=error or "ratelimited",
            status=status,
        )
    if (status is not None and status >= 500) or error in TRANSIENT_ERRORS:
        return Attempt("server_error", error=error or f"http_{status}", status=status)
    return Attempt("permanent", error=error or f"http_{status}", status=status)


def classify_exception(exc: BaseException) -> Attempt:
    """An ``Attempt`` for an exception raised by slack-sdk or aiohttp."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = getattr(response, "status_code", None) or getattr(response, "status", None)
        data = getattr(response, "data", None)
        error = str(data.get("error") or "") if isinstance(data, dict) else ""
        return classify_status(status, error, getattr(response, "headers", None))
    if isinstance(exc, aiohttp.ClientResponseError):
        return classify_status(exc.status, "", exc.headers)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ClientError | OSError | SlackClientError):
        return Attempt("network", error=f"{type(exc).__name__}: {exc}"[:300])
    raise exc


def _metadata(key: str) -> dict[str, Any]:
    return {"event_type": EVENT_TYPE, "event_payload": {"idempotency_key": key}}


def _has_key(message: Mapping[str, Any], key: str) -> bool:
    metadata = message.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return metadata.get("event_type") == EVENT_TYPE and payload.get("idempotency_key") == key


class ApiSender:
    """``chat.postMessage`` with a bot token; finds posted keys in channel history."""

    mode = "api"
    can_find = True
    supports_threads = True

    def __init__(self, token: str, base_url: str, timeout: float, history_limit: int) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self.client = AsyncWebClient(
            token=token,
            base_url=base_url,
            timeout=int(max(1, timeout)),
            session=self._session,
            retry_handlers=[],
        )
        self.history_limit = history_limit

    async def check(self) -> str:
        """``auth.test``: who the token is; raises ``SlackApiError`` when it is not valid."""
        response = await self.client.auth_test()
        return f"{response.get('team') or '?'} as {response.get('user') or '?'}"

    async def post(self, message: Message) -> Attempt:
        """One ``chat.postMessage`` call."""
        try:
            response = await self.client.chat_postMessage(
                channel=message.channel,
                text=message.text,
                blocks=message.blocks or None,
                thread_ts=message.thread_ts,
                metadata=_metadata(message.key),
                unfurl_links=False,
                unfurl_media=False,
            )
        except Exception as exc:
            return classify_exception(exc)
        return Attempt("posted", ts=response.get("ts"), channel_id=response.get("channel"))

    async def find(
        self, key: str, channel: str, channel_id: str | None, thread_ts: str | None, since: float
    ) -> tuple[str, str | None] | None:
        """``(ts, channel id)`` of a message carrying ``key`` posted since ``since``, if any.

        Reads at most ``history_limit`` messages: the thread's replies for a threaded message,
        else the channel's history from ``since`` on. Raises ``LookupFailed`` when it cannot.
        """
        target = channel_id or channel
        oldest = f"{max(0.0, since):.6f}"
        try:
            if thread_ts:
                response = await self.client.conversations_replies(
                    channel=target,
                    ts=thread_ts,
                    oldest=oldest,
                    include_all_metadata=True,
                    limit=self.history_limit,
                )
            else:
                response = await self.client.conversations_history(
                    channel=target,
                    oldest=oldest,
                    include_all_metadata=True,
                    inclusive=True,
                    limit=self.history_limit,
                )
        except Exception as exc:
            attempt = classify_exception(exc)
            raise LookupFailed(attempt.error or attempt.outcome) from exc
        for item in response.get("messages") or []:
            if _has_key(item, key):
                return str(item.get("ts")), response.get("channel") or channel_id
        return None

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()


class WebhookSender:
    """An incoming webhook: no ts comes back and history cannot be read."""

    mode = "webhook"
    can_find = False
    supports_threads = False

    def __init__(self, url: str, timeout: float) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self.client = AsyncWebhookClient(
            url, timeout=int(max(1, timeout)), session=self._session, retry_handlers=[]
        )

    async def check(self) -> str:
        """Nothing to check without posting; the webhook's URL is its credential."""
        return "incoming webhook"

    async def post(self, message: Message) -> Attempt:
        """One webhook POST; Slack answers ``ok`` or an error word with a 4xx/5xx status."""
        try:
            response = await self.client.send(
                text=message.text,
                blocks=message.blocks or None,
                metadata=_metadata(message.key),
                unfurl_links=False,
                unfurl_media=False,
            )
        except Exception as exc:
            return classify_exception(exc)
        if response.status_code == 200:
            return Attempt("posted")
        body = (response.body or "").strip()
        return classify_status(response.status_code, body[:100], response.headers)

    async def find(
        self, key: str, channel: str, channel_id: str | None, thread_ts: str | None, since: float
    ) -> tuple[str, str | None] | None:
        """Webhooks cannot read history."""
        raise LookupFailed("incoming webhooks cannot read channel history")

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()


@dataclass
class ConsoleSender:
    """Console mode: print a readable rendering of each message to stdout."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    mode: str = "console"
    can_find: bool = False
    supports_threads: bool = False

    async def check(self) -> str:
        """Always fine."""
        return "stdout"

    async def post(self, message: Message) -> Attempt:
        """Print the message and flush, so `make run` shows it at once."""
        self.out.write(format_message(message.channel, message.text, message.blocks))
        self.out.flush()
        return Attempt("posted")

    async def find(
        self, key: str, channel: str, channel_id: str | None, thread_ts: str | None, since: float
    ) -> tuple[str, str | None] | None:
        """Nothing to look in."""
        raise LookupFailed("console mode keeps no history")

    async def close(self) -> None:
        """Nothing to close."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How persistently one message is retried."""

    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    rate_limit_max_wait: float = 600.0


async def deliver(
    sender: Sender,
    pacer: ChannelPacer,
    message: Message,
    policy: RetryPolicy,
    *,
    pace_key: str,
    since: float,
    channel_id: str | None = None,
    on_retry: Callable[[str], None] = lambda reason: None,
    observe: Callable[[float], None] = lambda seconds: None,
    log_retry: Callable[[Attempt, float], Awaitable[None] | None] | None = None,
) -> Delivery:
    """Post ``message`` under ``policy``: paced, retried, bounded. Never raises for Slack errors.

    ``since`` (Unix seconds) bounds the history search done before retrying an ambiguous
    failure; ``on_retry`` receives ``rate_limited``, ``server_error`` or ``network``;
    ``observe`` receives each call's duration.
    """
    failures = 0
    attempts = 0
    rate_limited_for = 0.0
    while True:
        await pacer.acquire(pace_key)
        attempts += 1
        started = time.monotonic()
        attempt = await sender.post(message)
        observe(time.monotonic() - started)
        # Space from the answer too, not only from the start: the next request then reaches
        # Slack at least ``interval`` after this one did, whatever the network latency.
        pacer.hold(pace_key, pacer.interval)
        if attempt.outcome == "posted":
            return Delivery(True, attempt.ts, attempt.channel_id or channel_id, attempts=attempts)
        if attempt.outcome == "permanent":
            return _refused(attempt, attempts)
        if attempt.outcome == "rate_limited":
            wait = attempt.retry_after if attempt.retry_after is not None else 1.0
            if rate_limited_for + wait > policy.rate_limit_max_wait:
                return Delivery(
                    False,
                    error="rate_limited",
                    reason=f"rate limited for more than {policy.rate_limit_max_wait:g}s in total",
                    attempts=attempts,
                )
            rate_limited_for += wait
            pacer.hold(pace_key, wait)
            on_retry("rate_limited")
            if log_retry:
                await _maybe_await(log_retry(attempt, wait))
            continue
        failures += 1
        if failures >= policy.max_attempts:
            return Delivery(
                False,
                error=attempt.error or attempt.outcome,
                reason=f"gave up after {failures} failed attempts; last: {attempt.error or attempt.outcome}",
                attempts=attempts,
            )
        delay = backoff_delay(failures, policy.backoff_base, policy.backoff_max)
        pacer.hold(pace_key, delay)
        on_retry(attempt.outcome)
        if log_retry:
            await _maybe_await(log_retry(attempt, delay))
        # A timeout or a 5xx does not prove Slack dropped the message: look before posting again.
        found = await _find_existing(sender, message, channel_id, since)
        if found:
            return Delivery(
                True, found[0], found[1] or channel_id, attempts=attempts, found_existing=True
            )


def _refused(attempt: Attempt, attempts: int) -> Delivery:
    """The ``Delivery`` of a message Slack refused for good (with the error's hint)."""
    hint = HINTS.get(attempt.error, "")
    return Delivery(
        False,
        error=attempt.error,
        reason=f"Slack refused the message: {attempt.error}" + (f" ({hint})" if hint else ""),
        attempts=attempts,
    )


async def _find_existing(
    sender: Sender, message: Message, channel_id: str | None, since: float
) -> tuple[str, str | None] | None:
    """``message`` as Slack holds it (ts, channel id), if the sender can tell; else None."""
    if not sender.can_find:
        return None
    try:
        return await sender.find(message.key, message.channel, channel_id, message.thread_ts, since)
    except LookupFailed:
        return None


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value
