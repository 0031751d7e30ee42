"""Settings of the webhook bridge (`synctrail bridge`): every value a ``SYNCTRAIL_*`` variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from streams.event_loop import EventLoopName
from streams.settings import CommonSettings

MIB = 1024 * 1024


class BridgeConfigError(ValueError):
    """The bridge cannot start with these settings (the message says how to fix them)."""


class BridgeSettings(CommonSettings):
    """The HTTP receiver for Argo CD webhooks."""

    bridge_host: str = Field("127.0.0.1", description="Listen address of the bridge.")
    bridge_port: int = Field(8080, ge=0, le=65535, description="Listen port of the bridge.")
    bridge_tokens: SecretStr | None = Field(
        None,
        description="Accepted bearer tokens, comma-separated (`Authorization: Bearer <token>`).",
    )
    bridge_basic_auth: SecretStr | None = Field(
        None, description="Accepted HTTP Basic credentials as `user:password`."
    )
    bridge_allow_anonymous: bool = Field(
        False,
        description="Accept requests without credentials. Without this the bridge refuses to "
        "start when neither SYNCTRAIL_BRIDGE_TOKENS nor SYNCTRAIL_BRIDGE_BASIC_AUTH is set.",
    )
    bridge_max_body_bytes: int = Field(
        1 * MIB, ge=1024, description="Largest accepted request body; larger ones get 413."
    )
    bridge_spool_dir: Path = Field(
        Path("./var/spool"),
        description="Durable spool folder: accepted deliveries wait here while Kafka is down.",
    )
    bridge_spool_max_bytes: int = Field(
        256 * MIB,
        ge=1024,
        description="Most disk the spool may use; a full spool answers 503 with Retry-After.",
    )
    bridge_spool_segment_bytes: int = Field(
        4 * MIB, ge=512, description="Size at which the spool starts a new segment file."
    )
    bridge_retry_after_s: int = Field(
        5, ge=1, description="Retry-After seconds sent with 503 (spool full or unwritable)."
    )
    bridge_produce_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait for Kafka to acknowledge a record before it is spooled instead.",
    )
    bridge_probe_after_s: float = Field(
        0.25,
        gt=0,
        description="A produce not acknowledged after this long triggers a quick TCP probe of "
        "the brokers; if none answers the record is spooled at once.",
    )
    bridge_drain_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the bridge checks a down broker and drains the spool.",
    )
    bridge_drain_batch: int = Field(
        500, ge=1, description="Spooled records sent to Kafka per drain round."
    )
    bridge_linger_ms: int = Field(
        0,
        ge=0,
        description="Producer linger in milliseconds. 0 suits the bridge: records already "
        "gather into batches while the previous request is in flight.",
    )
    bridge_head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time from a request's first byte to the end of its headers; a "
        "slower client gets 408 and its connection is closed.",
    )
    bridge_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest time to receive a request's whole body; a slower client gets 408 "
        "and its connection is closed.",
    )
    bridge_keepalive_s: float = Field(
        60.0,
        gt=0,
        description="An open connection with no request under way (kept alive, or never used) "
        "is closed after this long.",
    )
    bridge_max_connections: int = Field(
        0,
        ge=0,
        description="Most client connections open at once; 0 means the open-file limit less "
        "256. At the bound a new connection replaces the oldest one not running a request.",
    )
    bridge_shutdown_timeout_s: float = Field(
        10.0, gt=0, description="On SIGTERM, the longest wait for in-flight requests."
    )
    bridge_event_loop: EventLoopName = Field(
        "uvloop",
        description="Event loop of the bridge process. uvloop (libuv, in C) costs the bridge "
        "9-25% less CPU per request than asyncio's own loop (bench.bridge); `asyncio` is the "
        "fallback, and is used with a warning where uvloop is not installed (Windows).",
    )

    def token_list(self) -> list[bytes]:
        """The configured bearer tokens, empty entries dropped."""
        if self.bridge_tokens is None:
            return []
        raw = self.bridge_tokens.get_secret_value()
        return [t.strip().encode() for t in raw.split(",") if t.strip()]

    def basic_credentials(self) -> bytes | None:
        """``user:password`` as bytes, or ``None`` when Basic auth is not configured."""
        if self.bridge_basic_auth is None:
            return None
        value = self.bridge_basic_auth.get_secret_value()
        return value.encode() if value else None

    def check(self) -> None:
        """Raise :class:`BridgeConfigError` if the bridge must not start with these settings."""
        basic = self.basic_credentials()
        if basic is not None and b":" not in basic:
            raise BridgeConfigError("SYNCTRAIL_BRIDGE_BASIC_AUTH must be `user:password`.")
        if not self.token_list() and basic is None and not self.bridge_allow_anonymous:
            raise BridgeConfigError(
                "no credentials configured: set SYNCTRAIL_BRIDGE_TOKENS (comma-separated bearer "
                "tokens) and/or SYNCTRAIL_BRIDGE_BASIC_AUTH (user:password), or "
                "SYNCTRAIL_BRIDGE_ALLOW_ANONYMOUS=true to accept unauthenticated webhooks."
            )

    def base_url(self) -> str:
        """The URL clients on this machine use to reach the bridge."""
        host = "127.0.0.1" if self.bridge_host in ("0.0.0.0", "") else self.bridge_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.bridge_port}"
