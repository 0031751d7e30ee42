"""Settings shared by every synctrail process, and the worker's own.

Every value comes from a ``SYNCTRAIL_*`` environment variable (or the ``.env`` file named by
``SYNCTRAIL_ENV_FILE``); defaults make ``make run`` work on a laptop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.event_loop import EventLoopName


def _env_file() -> str | None:
    return os.environ.get("SYNCTRAIL_ENV_FILE")


class CommonSettings(BaseSettings):
    """What every process needs: where Kafka is, how topics are named, how to log."""

    model_config = SettingsConfigDict(
        env_prefix="SYNCTRAIL_", env_file=_env_file(), extra="ignore", frozen=True
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated host:port. "
        "`synctrail dev` points it at the embedded broker it starts.",
    )
    topic_prefix: str = Field("synctrail.", description="Prefix of every topic name.")
    partitions: int = Field(
        8, ge=1, le=1024, description="Partitions for topics synctrail creates."
    )
    replication_factor: int = Field(
        1, ge=1, description="Replication factor for topics synctrail creates."
    )
    kafka_producer_max_batch_bytes: int = Field(
        16384,
        ge=1,
        description="Producer batch size in bytes (aiokafka's max_batch_size).",
    )
    default_app_namespace: str = Field(
        "argocd", description="Application namespace assumed when a body does not say."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level; logs are JSON lines on stderr."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")

    def topic(self, name: str) -> str:
        """Full topic name for an unprefixed topic name."""
        return f"{self.topic_prefix}{name}"


class WorkerSettings(CommonSettings):
    """The Faust worker (`synctrail worker`)."""

    worker_id: str = Field("synctrail-worker", description="Faust app id (consumer group).")
    worker_web_host: str = Field("127.0.0.1", description="Query API / metrics listen host.")
    worker_web_port: int = Field(6066, description="Query API / metrics listen port.")
    worker_store: str = Field(
        "memory://",
        description="Table store: `memory://` (state rebuilt from changelogs on start) "
        "or `rocksdb://` (needs the `rocksdb` extra).",
    )
    worker_data_dir: Path = Field(Path("./var/worker"), description="Faust data dir (rocksdb).")
    worker_batch_size: int = Field(500, ge=1, description="Events taken per batch.")
    worker_batch_within_s: float = Field(
        0.01, gt=0, description="Longest wait to fill a batch, seconds."
    )
    worker_history: int = Field(10, ge=1, description="Deploys kept per app (last known-good).")
    worker_event_loop: EventLoopName = Field(
        "uvloop",
        description="Event loop of the worker process. uvloop (libuv, in C) cost the worker "
        "0-15% (9% on average) less CPU per event than asyncio's own loop (bench.stream); "
        "`asyncio` is the fallback, and is used with a warning where uvloop is not installed "
        "(Windows).",
    )
    worker_fetch_max_wait_ms: int = Field(
        25,
        ge=1,
        le=30000,
        description="Longest time a fetch waits for new records. Faust's own 1500 ms adds up "
        "to that much latency to every deploy on brokers that answer long polls only at the "
        "deadline (the embedded one does).",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="`at_least_once`: a worker killed mid-batch re-emits that batch's "
        "outputs (consumers dedupe by delivery id). `exactly_once`: each input partition's "
        "outputs, state and consumed offsets commit in one Kafka transaction, and the worker "
        "reads its changelog read_committed; needs a broker with transactions (Apache Kafka; "
        "not the embedded one) and the `memory://` store. See docs/operations.md.",
    )
    broker_session_timeout_s: float = Field(
        10.0, gt=0, description="Consumer session timeout; short values speed up rebalances."
    )
    broker_rebalance_timeout_s: float = Field(
        10.0, gt=0, description="Consumer rebalance timeout; a first join waits about this long."
    )
    policy_file: Path | None = Field(None, description="YAML policy rules loaded at start.")
    slack_channel: str = Field("#deployments", description="Default Slack channel.")
    slack_violations_channel: str | None = Field(
        None, description="Extra channel that also receives policy violations."
    )
    slack_routes: str = Field(
        "",
        description="Channel routing rules `field:glob=#channel`, comma-separated, first match "
        "wins; field is app, project or namespace (e.g. `project:payments*=#payments`).",
    )
    argocd_url: str = Field("", description="Argo CD base URL for links in messages.")
