"""Every Kafka client's connection, from the one settings block of ``CommonSettings``.

No synctrail process builds a Kafka client's connection anywhere else: aiokafka's producers,
consumers and admin clients take :func:`producer_args`, :func:`consumer_args` or
:func:`admin_args` (:func:`client_args` plus the caller's own options), and the Faust app takes
``streams.app.faust_credentials``, made from the same settings (its consumer, producer and topic
creation all read ``broker_credentials``). ``tests/streams/kafka/test_client.py`` fails when a client is built
without them.

:func:`preflight` is what every process runs at start: one connection to a bootstrap server,
made the way the clients make theirs (TLS, then SASL, then a metadata request), so that a wrong
CA, a missing client certificate, refused credentials or the wrong protocol for the listener
stop the process with one message naming the setting to fix. aiokafka itself only logs
"Unable to bootstrap" for each of these and its callers retry forever. An unreachable broker is
not a configuration error: preflight then lets the process start and retry as it always did
(the bridge spools meanwhile).

Secrets: the SASL password goes into the client arguments only; no message made here carries
it, and :func:`describe` (for logs) names the user, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeAlias

from aiokafka import errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from streams.settings import CommonSettings, variable

log = logging.getLogger(__name__)

EXIT_KAFKA_CONFIG = 78  # EX_CONFIG (sysexits.h): a configuration error, restarting won't help
_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
# OpenSSL verify codes (X509_V_ERR_*) that point somewhere other than the CA file
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_CERT_EXPIRED = 10


class KafkaSecurityError(RuntimeError):
    """The Kafka connection settings cannot work; the message names the setting to fix."""


# What the lower-level helpers take: the settings (every process), a plaintext bootstrap
# string (the embedded broker, tests) or connection arguments already built.
Connection: TypeAlias = "CommonSettings | str | list[str] | Mapping[str, Any]"


DEFAULT_PORT = 9092


class BrokerAddress(NamedTuple):
    """One bootstrap server: as written (``address``), and the host and port it names."""

    address: str
    host: str
    port: int


def parse_bootstrap(bootstrap: str) -> list[BrokerAddress]:
    """A ``host:port[,host:port...]`` bootstrap string (``SYNCTRAIL_KAFKA_BOOTSTRAP``), read
    the way aiokafka reads it: blanks around items and empty items are ignored, the port
    defaults to 9092, an IPv6 address takes brackets when it has a port (``[::1]:9093``), and
    an empty host (``:9092``) is the loopback address."""
    addresses = []
    for item in bootstrap.split(","):
        address = item.strip()
        if not address:
            continue
        host, colon, port = address.rpartition(":")
        if not colon or host.endswith(":"):  # no port (a bare name or IPv6 address)
            host, port = address, ""
        addresses.append(
            BrokerAddress(address, host.strip("[]") or "127.0.0.1", int(port or DEFAULT_PORT))
        )
    return addresses


def bootstrap_servers(settings: CommonSettings) -> list[str]:
    """``SYNCTRAIL_KAFKA_BOOTSTRAP`` as a list of ``host:port``."""
    return [server.address for server in parse_bootstrap(settings.kafka_bootstrap)]


def ssl_context(settings: CommonSettings) -> ssl.SSLContext | None:
    """The TLS context of every client (None without TLS); read from the files each call,
    so a client made after a certificate rotation uses the new files."""
    if settings.kafka_security_protocol not in _TLS:
        return None
    cafile = settings.kafka_ssl_cafile
    try:
        context = create_ssl_context(cafile=cafile)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise KafkaSecurityError(
            f"cannot load the CA bundle {cafile}: {_reason(exc)} — check "
            f"{variable('kafka_ssl_cafile')} (PEM certificates)"
        ) from None
    if settings.kafka_ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise KafkaSecurityError(
                f"cannot load the client certificate {settings.kafka_ssl_certfile}: "
                f"{_reason(exc)} — check {variable('kafka_ssl_certfile')} and "
                f"{variable('kafka_ssl_keyfile')} (PEM, unencrypted key of that certificate)"
            ) from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_args(settings: CommonSettings) -> dict[str, Any]:
    """The connection arguments every aiokafka client takes: bootstrap servers, security
    protocol, TLS context and SASL credentials."""
    protocol = settings.kafka_security_protocol
    args: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        args["ssl_context"] = context
    if protocol in _SASL:
        args["sasl_mechanism"] = settings.kafka_sasl_mechanism
        args["sasl_plain_username"] = settings.kafka_sasl_username
        args["sasl_plain_password"] = settings.kafka_sasl_secret()
    return args


def connection(target: Connection) -> dict[str, Any]:
    """Connection arguments for ``target``: :func:`client_args` of settings, a plaintext
    bootstrap string or list as ``bootstrap_servers``, or a copy of arguments given."""
    if isinstance(target, CommonSettings):
        return client_args(target)
    if isinstance(target, (str, list)):
        return {"bootstrap_servers": target}
    return dict(target)


def producer_args(settings: CommonSettings, **options: Any) -> dict[str, Any]:
    """``AIOKafkaProducer(**producer_args(settings, acks="all", ...))``."""
    return {**client_args(settings), **options}


def consumer_args(settings: CommonSettings, **options: Any) -> dict[str, Any]:
    """``AIOKafkaConsumer(*topics, **consumer_args(settings, group_id=..., ...))``."""
    return {**client_args(settings), **options}


#: How every synctrail reader consumes: it commits nothing by itself, starts from the earliest
#: record where nothing is committed, and never sees what an aborted worker transaction wrote.
READER_OPTIONS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
}


def reader_args(target: Connection, **options: Any) -> dict[str, Any]:
    """``AIOKafkaConsumer(**reader_args(target, group_id=..., ...))``: :func:`connection` of
    ``target`` with :data:`READER_OPTIONS`, then the caller's own options."""
    return {**connection(target), **READER_OPTIONS, **options}


def admin_args(settings: CommonSettings, **options: Any) -> dict[str, Any]:
    """``AIOKafkaAdminClient(**admin_args(settings, request_timeout_ms=...))``."""
    return {**client_args(settings), **options}


def describe(settings: CommonSettings) -> dict[str, Any]:
    """What a log line may say about the connection (never the password)."""
    out: dict[str, Any] = {
        "bootstrap": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in _SASL:
        out["sasl_mechanism"] = settings.kafka_sasl_mechanism
        out["sasl_username"] = settings.kafka_sasl_username
    return out


# ---------------------------------------------------------------------------- preflight


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(settings: CommonSettings, address: str, exc: BaseException) -> str | None:
    """The one-line message for a connection error that the settings caused, naming the
    setting to fix; None when the error says only that the broker is unreachable."""
    protocol = variable("kafka_security_protocol")
    bootstrap = variable("kafka_bootstrap")
    sasl = settings.kafka_security_protocol in _SASL
    tls = settings.kafka_security_protocol in _TLS
    if isinstance(exc, _Unauthenticated) and not sasl:
        return (
            f"{address} closed the connection at the first request — the listener seems to "
            f"require SASL: check {protocol} (and the port in {bootstrap})"
        )
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = cause.verify_code
            what = (
                f"TLS handshake with {address} failed: certificate verify failed: {_reason(cause)}"
            )
            if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
                return (
                    f"{what} — the broker's certificate does not name this address: check "
                    f"{bootstrap} (use a name the certificate carries) or "
                    f"{variable('kafka_ssl_check_hostname')}"
                )
            if code == _CERT_EXPIRED:
                return f"{what} — the broker's certificate has expired (renew it on the broker)"
            return f"{what} — check {variable('kafka_ssl_cafile')}"
        if isinstance(cause, ssl.SSLError):
            reason = (cause.reason or "").upper()
            if "ALERT" in reason:
                what = (
                    f"TLS handshake with {address} failed: the broker refused it ({_reason(cause)})"
                )
                if settings.kafka_ssl_certfile is None:
                    return (
                        f"{what} — the listener requires a client certificate (mTLS): set "
                        f"{variable('kafka_ssl_certfile')} and {variable('kafka_ssl_keyfile')}"
                    )
                return (
                    f"{what} — check {variable('kafka_ssl_certfile')} and "
                    f"{variable('kafka_ssl_keyfile')} (a certificate the broker's CA signed, "
                    "not expired)"
                )
            return (
                f"TLS handshake with {address} failed: {_reason(cause)} — is it a TLS listener? "
                f"check {protocol} and the port in {bootstrap}"
            )
        if isinstance(cause, (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError)):
            detail = cause.args[0] if cause.args and isinstance(cause.args[0], str) else ""
            return (
                f"SASL authentication with {address} as user {settings.kafka_sasl_username!r} "
                f"({settings.kafka_sasl_mechanism}) failed: {detail or 'refused'} — check "
                f"{variable('kafka_sasl_username')} and {variable('kafka_sasl_password')}"
            )
        if isinstance(cause, errors.UnsupportedSaslMechanismError):
            return (
                f"{address} does not offer SASL mechanism {settings.kafka_sasl_mechanism} on "
                f"this listener — check {variable('kafka_sasl_mechanism')}"
            )
        if isinstance(cause, errors.IllegalSaslStateError):
            return (
                f"{address} does not speak SASL on this listener — check {protocol} "
                f"(and the port in {bootstrap})"
            )
        if isinstance(cause, asyncio.IncompleteReadError) and not tls:
            return (
                f"{address} closed the connection without a Kafka answer — it looks like a TLS "
                f"listener: check {protocol} (and the port in {bootstrap})"
            )
        if isinstance(cause, ConnectionResetError) and tls:
            return (
                f"TLS handshake with {address} failed: the connection was reset — is it a TLS "
                f"listener? check {protocol} and the port in {bootstrap}"
            )
    return None


class _Unauthenticated(RuntimeError):
    """The broker closed the connection at the metadata request (it wants SASL first)."""


async def _probe(settings: CommonSettings, server: BrokerAddress, timeout_s: float) -> None:
    args = client_args(settings)
    conn = await asyncio.wait_for(
        create_conn(
            server.host,
            server.port,
            client_id="synctrail-preflight",
            request_timeout_ms=int(timeout_s * 1000),
            ssl_context=args.get("ssl_context"),
            security_protocol=args["security_protocol"],
            sasl_mechanism=args.get("sasl_mechanism"),
            sasl_plain_username=args.get("sasl_plain_username"),
            sasl_plain_password=args.get("sasl_plain_password"),
        ),
        timeout_s,
    )
    try:
        # ApiVersions is allowed before authentication; a metadata request is not, so a
        # SASL listener reached without SASL closes the connection here.
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    except errors.KafkaConnectionError as exc:
        raise _Unauthenticated(str(exc)) from exc
    finally:
        conn.close()


async def preflight(settings: CommonSettings, timeout_s: float = 10.0) -> bool:
    """Connect once to a bootstrap server the way every client will.

    Returns True once one answered, False when none could be reached (not a configuration
    error: the caller starts and retries as usual). Raises :class:`KafkaSecurityError` with
    one message naming the setting to fix when the TLS handshake, the SASL authentication or
    the protocol for the listener fails.
    """
    ssl_context(settings)  # unreadable certificate files fail here, before any connection
    unreachable = []
    for server in parse_bootstrap(settings.kafka_bootstrap):
        address = server.address
        try:
            await _probe(settings, server, timeout_s)
        except (OSError, errors.KafkaError, TimeoutError, _Unauthenticated) as exc:
            message = classify(settings, address, exc)
            if message is not None:
                raise KafkaSecurityError(message) from None
            unreachable.append(f"{address}: {_reason(exc)}")
            continue
        log.info("kafka connection checked", extra={**describe(settings), "broker": address})
        return True
    log.warning(
        "no Kafka bootstrap server reachable at start; the clients keep trying",
        extra={**describe(settings), "errors": unreachable},
    )
    return False


async def preflight_or_exit(settings: CommonSettings, timeout_s: float = 10.0) -> bool:
    """:func:`preflight` at a process's start: on a configuration error, log it as one line
    and exit with :data:`EXIT_KAFKA_CONFIG` (a restart would not help)."""
    started = time.monotonic()
    try:
        return await preflight(settings, timeout_s)
    except KafkaSecurityError as exc:
        log.critical(
            "kafka connection refused: %s",
            exc,
            extra={**describe(settings), "seconds": round(time.monotonic() - started, 2)},
        )
        with contextlib.suppress(Exception):
            for handler in logging.getLogger().handlers:
                handler.flush()
        raise SystemExit(EXIT_KAFKA_CONFIG) from None


def check_at_start(settings: CommonSettings, timeout_s: float = 10.0) -> bool:
    """:func:`preflight_or_exit` for a process that has no event loop running yet."""
    return asyncio.run(preflight_or_exit(settings, timeout_s))
