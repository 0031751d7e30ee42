"""Settings of the Slack connector (`synctrail slack`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from streams.settings import CommonSettings


class SlackSettings(CommonSettings):
    """Where messages go, how fast, how persistently, and where the connector reports."""

    slack_token: SecretStr | None = Field(
        None,
        description="Bot token (xoxb-…) for chat.postMessage; needs chat:write and "
        "channels:history (groups:history for private channels) to check for a message "
        "after a crash. Neither token nor webhook → console mode (stdout).",
    )
    slack_webhook_url: SecretStr | None = Field(
        None,
        description="Incoming webhook URL; used when set (it posts to the webhook's own channel, "
        "so routing and threads do not apply).",
    )
    slack_api_url: str = Field(
        "https://slack.com/api/", description="Slack Web API base URL (a local server in tests)."
    )
    slack_channel: str = Field(
        "#deployments", description="Channel for a notification that names none."
    )
    slack_threads: Literal["off", "app"] = Field(
        "off",
        description="`app`: one thread per app per channel per day (UTC), its ts kept in "
        "<prefix>slack-state so it survives restarts; needs a token.",
    )
    slack_rate_per_channel_s: float = Field(
        1.0,
        ge=0,
        description="Least time between two posts to one channel, seconds (Slack allows about "
        "one message per second per channel).",
    )
    slack_max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts per message on 5xx and network errors before it is dead-lettered.",
    )
    slack_backoff_base_s: float = Field(
        1.0, gt=0, description="First retry delay on 5xx/network errors; doubles per attempt."
    )
    slack_backoff_max_s: float = Field(30.0, gt=0, description="Longest retry delay, seconds.")
    slack_rate_limit_max_wait_s: float = Field(
        600.0,
        gt=0,
        description="Most time one message may spend waiting on 429 Retry-After in total before "
        "it is dead-lettered.",
    )
    slack_timeout_s: float = Field(15.0, gt=0, description="HTTP timeout of one Slack call.")
    slack_history_limit: int = Field(
        200,
        ge=1,
        le=1000,
        description="Recent messages examined (conversations.history) to tell whether a message "
        "whose post was interrupted reached Slack.",
    )
    slack_group_id: str = Field(
        "synctrail-slack", description="Consumer group of the connector on <prefix>notifications."
    )
    slack_max_in_flight: int = Field(
        500, ge=1, description="Notifications fetched but not yet posted, at most."
    )
    slack_channel_queue_max: int = Field(
        50,
        ge=1,
        description="Notifications waiting for one channel, at most; when a channel is full, "
        "the partitions whose next record is for it pause until it has room.",
    )
    slack_state_retention_days: float = Field(
        30.0,
        gt=0,
        description="Posted keys older than this are deleted from <prefix>slack-state at start.",
    )
    slack_shutdown_grace_s: float = Field(
        10.0, ge=0, description="On SIGTERM, time given to posts in progress to finish."
    )
    slack_metrics_host: str = Field("127.0.0.1", description="Listen address of /metrics.")
    slack_metrics_port: int = Field(
        9109, ge=0, le=65535, description="Listen port of /metrics and /healthz (0: any free)."
    )
    broker_session_timeout_s: float = Field(
        10.0, gt=0, description="Consumer session timeout; short values speed up rebalances."
    )
    broker_rebalance_timeout_s: float = Field(
        10.0, gt=0, description="Consumer rebalance timeout; a first join waits about this long."
    )

    @property
    def mode(self) -> Literal["webhook", "api", "console"]:
        """How messages leave: an incoming webhook, the Web API, or stdout."""
        if self.slack_webhook_url and self.slack_webhook_url.get_secret_value():
            return "webhook"
        if self.slack_token and self.slack_token.get_secret_value():
            return "api"
        return "console"
