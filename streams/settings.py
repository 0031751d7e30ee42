"""Settings shared by every synctrail process, and the worker's own.

Every value comes from a ``SYNCTRAIL_*`` environment variable (or the ``.env`` file named by
``SYNCTRAIL_ENV_FILE``); defaults make ``make run`` work on a laptop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from streams.domain import cloudevents
from streams.event_loop import EventLoopName


def _env_file() -> str | None:
    return os.environ.get("SYNCTRAIL_ENV_FILE")


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECRETS_DIR_VARIABLE = "SYNCTRAIL_SECRETS_DIR"
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")
_OPTIONAL = (
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_sasl_mechanism",
    "kafka_sasl_password",
    "kafka_sasl_password_file",
)


def variable(field: str) -> str:
    """The environment variable of a settings field (``kafka_ssl_cafile`` → its name)."""
    return f"SYNCTRAIL_{field.upper()}"


class CommonSettings(BaseSettings):
    """What every process needs: where Kafka is, how topics are named, how to log."""

    model_config = SettingsConfigDict(
        env_prefix="SYNCTRAIL_",
        env_file=_env_file(),
        extra="ignore",
        frozen=True,
        # a ValidationError printed whole must not show a secret it was given
        hide_input_in_errors=True,
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated host:port. "
        "`synctrail dev` points it at the embedded broker it starts.",
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="How every Kafka client connects: `PLAINTEXT`, `SSL` (TLS, and mTLS with "
        "a client certificate), `SASL_PLAINTEXT` or `SASL_SSL` (user and password, over TLS).",
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM bundle of the CAs that verify the brokers' certificates (SSL and "
        "SASL_SSL); the system's CAs when unset.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (chain) for mTLS; optional."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None,
        description="PEM private key of the client certificate (unencrypted); may be left unset "
        "when the certificate file holds the key.",
    )
    kafka_ssl_check_hostname: bool = Field(
        True,
        description="Check that a broker's certificate names the host it was reached at. "
        "Turn off only for brokers reached by an address their certificates do not name.",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None,
        description="SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with "
        "SASL_PLAINTEXT and SASL_SSL.",
    )
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None,
        description="SASL password (a secret; or from `SYNCTRAIL_KAFKA_SASL_PASSWORD_FILE`, or "
        "a file of this name in `SYNCTRAIL_SECRETS_DIR`).",
    )
    kafka_sasl_password_file: Path | None = Field(
        None,
        description="File holding the SASL password (a mounted Secret), read at start; "
        "one trailing newline is ignored.",
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
    kafka_idempotence: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Idempotent producers (a retried produce cannot duplicate or reorder a "
        "record; acks=all either way): `auto` asks the broker at start and uses them where it "
        "has them (Apache Kafka; the embedded broker has none), `on` always, `off` never.",
    )
    default_app_namespace: str = Field(
        "argocd", description="Application namespace assumed when a body does not say."
    )
    event_source: str = Field(
        "",
        description="The CloudEvents `source` (`ce_source` header) of every record written, and "
        "the `context.source` of every CDEvent: a "
        "URI reference naming this synctrail installation. Empty: `/synctrail/<topic prefix "
        "without its trailing dot>`, e.g. `/synctrail/synctrail`.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level; logs are JSON lines on stderr."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")

    def topic(self, name: str) -> str:
        """Full topic name for an unprefixed topic name."""
        return f"{self.topic_prefix}{name}"

    def ce_source(self) -> str:
        """``SYNCTRAIL_EVENT_SOURCE``, or ``/synctrail/<topic prefix without its trailing
        dot>`` when it is empty (see docs/standard-events.md)."""
        return self.event_source or cloudevents.default_source(self.topic_prefix)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Variables, then the ``.env`` file, then files in ``SYNCTRAIL_SECRETS_DIR``.

        A file there named like a variable (``SYNCTRAIL_KAFKA_SASL_PASSWORD``, any case) is
        that variable's value: how Kubernetes mounts a Secret as a volume. The directory is
        read when settings are made, not when this module is imported.
        """
        secrets_dir = os.environ.get(SECRETS_DIR_VARIABLE)
        if secrets_dir:
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator(*_OPTIONAL, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `SYNCTRAIL_KAFKA_SSL_CAFILE=` (as in .env.example) means unset, not the path "."
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> CommonSettings:
        """Refuse combinations that cannot connect; each message names the variable to fix.

        Messages never carry a value: a ValidationError printed whole would show its input.
        """
        protocol = self.kafka_security_protocol
        proto = f"{variable('kafka_security_protocol')}={protocol}"
        if protocol in _SASL:
            if self.kafka_sasl_mechanism is None:
                raise ValueError(f"{variable('kafka_sasl_mechanism')} is required with {proto}")
            if not self.kafka_sasl_username:
                raise ValueError(f"{variable('kafka_sasl_username')} is required with {proto}")
            if self.kafka_sasl_password is not None and self.kafka_sasl_password_file:
                raise ValueError(
                    f"set {variable('kafka_sasl_password')} or "
                    f"{variable('kafka_sasl_password_file')}, not both"
                )
            if self.kafka_sasl_password is None and self.kafka_sasl_password_file is None:
                raise ValueError(
                    f"{variable('kafka_sasl_password')} (or "
                    f"{variable('kafka_sasl_password_file')}) is required with {proto}"
                )
            if self.kafka_sasl_password_file is not None:
                _readable(self.kafka_sasl_password_file, "kafka_sasl_password_file")
        else:
            for name in ("kafka_sasl_mechanism", "kafka_sasl_password", "kafka_sasl_password_file"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{variable(name)} is set but {proto} does not use SASL: "
                        "use SASL_SSL or SASL_PLAINTEXT, or unset it"
                    )
            if self.kafka_sasl_username:
                raise ValueError(
                    f"{variable('kafka_sasl_username')} is set but {proto} does not use SASL: "
                    "use SASL_SSL or SASL_PLAINTEXT, or unset it"
                )
        tls_files = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
        for name in tls_files:
            path = getattr(self, name)
            if path is None:
                continue
            if protocol not in _TLS:
                raise ValueError(
                    f"{variable(name)} is set but {proto} does not use TLS: "
                    "use SSL or SASL_SSL, or unset it"
                )
            _readable(path, name)
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError(
                f"{variable('kafka_ssl_keyfile')} needs {variable('kafka_ssl_certfile')} "
                "(the client certificate it belongs to)"
            )
        return self

    def kafka_sasl_secret(self) -> str | None:
        """The SASL password, from the variable or the file (read now), or None."""
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        if self.kafka_sasl_password_file is not None:
            text = self.kafka_sasl_password_file.read_text()
            return text[:-1] if text.endswith("\n") else text
        return None


def _readable(path: Path, field: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{variable(field)}: cannot read {path}: {exc.strerror}") from None


class WorkerSettings(CommonSettings):
    """The Faust worker (`synctrail worker`)."""

    worker_id: str = Field("synctrail-worker", description="Faust app id (consumer group).")
    worker_web_host: str = Field("127.0.0.1", description="Query API / metrics listen host.")
    worker_web_port: int = Field(6066, description="Query API / metrics listen port.")
    worker_advertised_host: str | None = Field(
        None,
        description="Host name other workers use to forward a query to this one. Default: the "
        "listen host, or the machine's host name when that is a wildcard (0.0.0.0); on "
        "Kubernetes the pod's DNS name under the StatefulSet's headless Service.",
    )
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
    worker_commit_interval_s: float = Field(
        2.8,
        gt=0,
        description="How often Faust commits the consumed offsets acknowledged since its last "
        "commit (at_least_once). The worker also commits as soon as each batch's outputs and "
        "states are acknowledged; this timer is the fallback.",
    )
    worker_history: int = Field(10, ge=1, description="Deploys kept per app (last known-good).")
    dora_failure_window: float = Field(
        3600.0,
        gt=0,
        description="Seconds after a deployment finished during which a Degraded health "
        "transition or a rollback makes it a change failure (docs/dora.md).",
    )
    dora_history: int = Field(
        30,
        ge=2,
        description="Deployments each app's DORA history keeps before folding the oldest into "
        "running totals (docs/dora.md, what an app's state keeps).",
    )
    worker_event_loop: EventLoopName = Field(
        "uvloop",
        description="Event loop of the worker process. uvloop (libuv, in C) cost the worker "
        "0-15% (9% on average) less CPU per event than asyncio's own loop (bench.stream); "
        "`asyncio` is the fallback, and is used with a warning where uvloop is not installed "
        "(Windows) and over TLS (uvloop took 30 s to close a TLS consumer).",
    )
    worker_fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        le=30000,
        description="Longest time a fetch waits for new records. Unset: 25 ms on the embedded "
        "broker, which answers a long poll only at its deadline (Faust's own 1500 ms added up "
        "to that much latency to every deploy), and 500 ms (Kafka's default) on Apache Kafka, "
        "which answers as soon as records arrive.",
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
    cdevents: bool = Field(
        True,
        description="Write a CDEvent (service.deployed, upgraded or rolledback) on "
        "<prefix>cdevents for every successful deployment (docs/standard-events.md). Off saves "
        "the worker and the brokers one record per deployment; the app's environments are still "
        "kept, so turning it on again names the next deployment correctly.",
    )
    notify_health: bool = Field(
        True,
        description="Post a short Slack message when an app turns Degraded after a deploy, and "
        "when it is Healthy again, threaded under the deploy's message when threads are on.",
    )
