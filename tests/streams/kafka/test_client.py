"""The Kafka connection settings block and the one place that builds clients from it.

Real handshakes are in tests/connectors/test_kafka_security.py; here: what the builders hand
every client, what the settings refuse (and that a refusal never shows a secret), and a scan
of the code that fails when a Kafka client is built without the builders.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from pydantic import ValidationError

from connectors.broker import free_port
from connectors.cli import build_parser, main
from streams.app import faust_broker, faust_credentials
from streams.kafka.client import (
    admin_args,
    client_args,
    connection,
    consumer_args,
    producer_args,
)
from streams.settings import CommonSettings, WorkerSettings
from tests.support import REPO

SECRET = "s3cret-pa55word-42"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A CA and a client certificate, as PEM files."""
    import trustme

    ca = trustme.CA()
    client = ca.issue_cert("client@example.test")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SYNCTRAIL_"):
            monkeypatch.delenv(name)


def sasl_ssl(tls_files: dict[str, Path], **extra: object) -> CommonSettings:
    values: dict[str, object] = {
        "kafka_bootstrap": "a:9093, b:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_ssl_cafile": tls_files["ca"],
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "synctrail",
        "kafka_sasl_password": SECRET,
    }
    values.update(extra)
    return CommonSettings(**values)  # type: ignore[arg-type]


def test_plaintext_clients_get_the_bootstrap_list_and_no_security():
    args = client_args(CommonSettings(kafka_bootstrap="a:9092, b:9092"))
    assert args == {"bootstrap_servers": ["a:9092", "b:9092"], "security_protocol": "PLAINTEXT"}
    assert faust_credentials(CommonSettings()) is None
    assert faust_broker(CommonSettings(kafka_bootstrap="a:9092,b:9092")) == [
        "kafka://a:9092",
        "kafka://b:9092",
    ]


def test_sasl_ssl_clients_get_a_verifying_tls_context_and_the_credentials(tls_files):
    settings = sasl_ssl(tls_files)
    args = client_args(settings)
    context = args.pop("ssl_context")
    assert args == {
        "bootstrap_servers": ["a:9093", "b:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "synctrail",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the CA file, not the system's
    for build in (producer_args, consumer_args, admin_args):
        built = build(settings, client_id="x")
        assert built["client_id"] == "x" and built["sasl_plain_password"] == SECRET
        assert built["security_protocol"] == "SASL_SSL" and "ssl_context" in built


def test_mtls_loads_the_client_certificate_and_hostname_checks_can_be_turned_off(tls_files):
    settings = CommonSettings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=tls_files["ca"],
        kafka_ssl_certfile=tls_files["cert"],
        kafka_ssl_keyfile=tls_files["key"],
        kafka_ssl_check_hostname=False,
    )
    args = client_args(settings)
    assert args["security_protocol"] == "SSL" and "sasl_mechanism" not in args
    assert args["ssl_context"].check_hostname is False
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)


def test_faust_turns_our_credentials_into_the_same_client_arguments(tls_files):
    """Faust's aiokafka driver hands ``broker_credentials`` to its consumer, producers and
    topic creation through ``credentials_to_aiokafka_auth``; if Faust moves it, this fails."""
    for settings in (
        sasl_ssl(tls_files),
        sasl_ssl(
            tls_files,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_ssl_cafile=None,
            kafka_sasl_mechanism="PLAIN",
        ),
        CommonSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=tls_files["ca"]),
    ):
        ours = client_args(settings)
        theirs = faust_aiokafka.credentials_to_aiokafka_auth(faust_credentials(settings))
        assert theirs["security_protocol"] == ours["security_protocol"]
        for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
            assert theirs.get(key) == ours.get(key), key
        assert (theirs.get("ssl_context") is None) == ("ssl_context" not in ours)


def test_the_worker_app_is_built_with_the_credentials_and_our_client_args(tls_files):
    from streams.topology import build

    settings = WorkerSettings(**sasl_ssl(tls_files).model_dump())
    app = build(settings).app
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "synctrail" and credentials.password == SECRET
    assert credentials.ssl_context is not None  # SASL_SSL, not SASL_PLAINTEXT
    assert SECRET not in repr(credentials)
    assert app.client_args["sasl_plain_password"] == SECRET  # true_end_offsets' clients
    assert [str(url) for url in app.conf.broker] == ["kafka://a:9093", "kafka://b:9093"]


def test_the_password_can_come_from_a_file_or_the_secrets_dir(
    tls_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    password_file = tmp_path / "password"
    password_file.write_text(SECRET + "\n")
    settings = sasl_ssl(tls_files, kafka_sasl_password=None, kafka_sasl_password_file=password_file)
    assert client_args(settings)["sasl_plain_password"] == SECRET  # trailing newline dropped

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SYNCTRAIL_KAFKA_SASL_PASSWORD").write_text(SECRET)
    monkeypatch.setenv("SYNCTRAIL_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SASL_USERNAME", "synctrail")
    assert client_args(CommonSettings())["sasl_plain_password"] == SECRET


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"kafka_sasl_mechanism": None}, "SYNCTRAIL_KAFKA_SASL_MECHANISM is required"),
        ({"kafka_sasl_username": ""}, "SYNCTRAIL_KAFKA_SASL_USERNAME is required"),
        ({"kafka_sasl_password": None}, "SYNCTRAIL_KAFKA_SASL_PASSWORD (or"),
        (
            {"kafka_sasl_password_file": Path("/nonexistent/password")},
            "not both",
        ),
        (
            {"kafka_sasl_password": None, "kafka_sasl_password_file": Path("/nonexistent/pw")},
            "SYNCTRAIL_KAFKA_SASL_PASSWORD_FILE: cannot read",
        ),
        ({"kafka_ssl_cafile": Path("/nonexistent/ca.pem")}, "SYNCTRAIL_KAFKA_SSL_CAFILE"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "does not use"),
        ({"kafka_ssl_keyfile": Path(__file__)}, "SYNCTRAIL_KAFKA_SSL_KEYFILE needs"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_impossible_combinations_are_refused_naming_the_variable(tls_files, values, names):
    with pytest.raises(ValidationError) as caught:
        sasl_ssl(tls_files, **values)
    assert names in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.errors(include_input=False))  # what the CLI prints


def test_a_settings_error_at_the_command_line_names_the_variable_and_hides_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SASL_USERNAME", "synctrail")
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SASL_PASSWORD", SECRET)
    assert main(["topics", "create", "--check"]) == 2
    err = capsys.readouterr().err
    assert "SYNCTRAIL_KAFKA_SASL_MECHANISM is required" in err
    assert SECRET not in err


def test_help_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SYNCTRAIL_KAFKA_SASL_PASSWORD", SECRET)
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "bridge" in a.choices)
    texts = [parser.format_help()] + [p.format_help() for p in subparsers.choices.values()]
    assert all(SECRET not in text for text in texts)
    assert any("SYNCTRAIL_KAFKA_SASL_PASSWORD" in text for text in texts)


def test_connection_takes_settings_a_plaintext_bootstrap_or_built_arguments():
    assert connection("h:1") == {"bootstrap_servers": "h:1"}
    assert connection(["h:1"]) == {"bootstrap_servers": ["h:1"]}
    assert connection(CommonSettings(kafka_bootstrap="h:1"))["bootstrap_servers"] == ["h:1"]
    assert connection({"bootstrap_servers": "x", "security_protocol": "SSL"})["security_protocol"]


# ------------------------------------------------------------------ every client uses them

_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}
_BUILDERS = {
    "client_args",
    "producer_args",
    "consumer_args",
    "admin_args",
    "connection",
    "reader_args",
}


def _client_constructions() -> list[tuple[str, ast.Call]]:
    found = []
    for package in ("streams", "connectors"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "kafka_client.py":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _CLIENTS:
                    found.append((f"{path.relative_to(REPO)}:{node.lineno}", node))
    return found


def test_every_kafka_client_is_built_from_the_connection_builders():
    constructions = _client_constructions()
    # the scan sees them all (17 when this was written): a scan that finds none proves nothing
    assert len(constructions) >= 17, [where for where, _ in constructions]
    unbuilt = []
    for where, call in constructions:
        starred = [kw.value for kw in call.keywords if kw.arg is None]
        built = any(
            isinstance(value, ast.Call)
            and (getattr(value.func, "id", None) or getattr(value.func, "attr", None)) in _BUILDERS
            for value in starred
        )
        direct = [kw.arg for kw in call.keywords if kw.arg == "bootstrap_servers"]
        if not built or direct:
            unbuilt.append(where)
    assert unbuilt == [], "build these with streams.kafka.client (client_args/producer_args/...)"


def test_the_worker_runs_on_asyncios_loop_over_tls(tls_files):
    """uvloop took 30 s to close a TLS consumer (see streams.worker.event_loop_for)."""
    from streams.worker import event_loop_for

    assert event_loop_for(WorkerSettings()) == "uvloop"
    tls = WorkerSettings(**sasl_ssl(tls_files).model_dump())
    assert event_loop_for(tls) == "asyncio"
    plain_sasl = WorkerSettings(
        **sasl_ssl(
            tls_files,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_ssl_cafile=None,
            kafka_sasl_mechanism="PLAIN",
        ).model_dump()
    )
    assert event_loop_for(plain_sasl) == "uvloop"


def test_certificate_errors_name_the_setting_that_fixes_them(tls_files):
    """The branches the test node cannot produce (its certificate names every address used)."""
    from streams.kafka.client import classify

    settings = CommonSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=tls_files["ca"])

    def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
        error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
        error.verify_code, error.verify_message = code, message
        return error

    hostname = classify(settings, "kafka:9093", verify_error(62, "Hostname mismatch"))
    assert hostname is not None and "SYNCTRAIL_KAFKA_SSL_CHECK_HOSTNAME" in hostname
    assert "SYNCTRAIL_KAFKA_BOOTSTRAP" in hostname
    expired = classify(settings, "kafka:9093", verify_error(10, "certificate has expired"))
    assert expired is not None and "expired" in expired
    unknown = classify(settings, "kafka:9093", verify_error(20, "unable to get local issuer"))
    assert unknown is not None and unknown.endswith("check SYNCTRAIL_KAFKA_SSL_CAFILE")
    # a refused connection is not a configuration error: the process starts and retries
    assert classify(settings, "kafka:9093", ConnectionRefusedError(111, "refused")) is None


def test_preflight_reads_bootstrap_addresses_like_aiokafka():
    from aiokafka.conn import get_ip_port_afi

    from streams.kafka.client import parse_bootstrap

    def host_port(address: str) -> tuple[str, int]:
        (server,) = parse_bootstrap(address)
        return server.host, server.port

    assert host_port("kafka") == ("kafka", 9092)
    assert host_port("kafka:9093") == ("kafka", 9093)
    assert host_port("[::1]:9093") == ("::1", 9093)
    for address in ("kafka", "kafka:9093", "10.0.0.7:19092", "[::1]:9093", "::1", "[fe80::1]"):
        assert host_port(address) == get_ip_port_afi(address)[:2], address


def test_one_parser_reads_every_bootstrap_list():
    from streams.kafka.client import BrokerAddress, bootstrap_servers, parse_bootstrap

    assert parse_bootstrap(" a:1, ,[::1]:2,b ,:3") == [
        BrokerAddress("a:1", "a", 1),
        BrokerAddress("[::1]:2", "::1", 2),
        BrokerAddress("b", "b", 9092),
        BrokerAddress(":3", "127.0.0.1", 3),
    ]
    settings = CommonSettings(kafka_bootstrap=" a:1, ,[::1]:2,b ")
    assert bootstrap_servers(settings) == ["a:1", "[::1]:2", "b"]
    assert faust_broker(settings) == ["kafka://a:1", "kafka://[::1]:2", "kafka://b"]


async def test_the_bridges_tcp_probe_reads_the_bootstrap_list_with_the_same_parser():
    import asyncio

    from connectors.bridge.delivery import tcp_reachable

    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # an address without a port (so 9092) used to make the probe raise ValueError
        assert await tcp_reachable(f"127.0.0.2, 127.0.0.1:{port}", timeout=5)
        assert not await tcp_reachable(f"127.0.0.1:{free_port()}", timeout=5)
    finally:
        server.close()
        await server.wait_closed()
