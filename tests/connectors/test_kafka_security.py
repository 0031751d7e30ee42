"""synctrail against a secured Apache Kafka: real TLS, mTLS, SCRAM and PLAIN handshakes.

The ``apache_kafka`` node offers every listener (see ``tests.apache_kafka.node``). The whole
pipeline — ``topics create``, bridge → worker → Slack connector → exporter, ``tail`` — runs once
over SASL_SSL with SCRAM-SHA-512 and once over mTLS; the other mechanisms get a
producer/consumer round trip through ``streams.kafka.client``. Results are read back over the
node's plaintext listener with the tests' own helpers. A wrong password, an unknown user, a
wrong CA or a missing client certificate must stop a process at start with one line that
names the setting to fix, and never print the password.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.types import TP

from streams.faust_fixes import true_end_offsets
from streams.kafka.client import (
    EXIT_KAFKA_CONFIG,
    client_args,
    consumer_args,
    preflight,
    producer_args,
)
from streams.kafka.setup import (
    TopicPlan,
    check_topics,
    create_topics,
    ensure_topics_for,
    plan_topics,
)
from streams.kafka.topics import ALL_TOPICS, SYNC_EVENTS
from streams.settings import CommonSettings
from tests.apache_kafka.node import PLAIN_USERS, SCRAM_USERS, KafkaNode
from tests.e2e.harness import Worker
from tests.e2e.pipeline import (
    BRIDGE_TOKEN,
    HttpService,
    Pipeline,
    common_env,
    fixture_webhooks,
)
from tests.slack_server import SlackServer
from tests.support import REPO, read_topic, wait_for

SCRAM_PASSWORD = SCRAM_USERS["synctrail"]
PLAIN_PASSWORD = PLAIN_USERS["synctrail"]


def security_env(node: KafkaNode, mode: str, tmp_path: Path) -> dict[str, str]:
    """``SYNCTRAIL_KAFKA_*`` for one way of connecting to ``node``.

    The SCRAM password comes from a file in two of the modes (``..._FILE`` and the secrets
    dir), as Kubernetes mounts it.
    """
    assert node.tls is not None
    tls = {"SYNCTRAIL_KAFKA_SSL_CAFILE": str(node.tls.ca)}
    if mode == "scram-sha-512":
        password_file = tmp_path / "kafka-password"
        password_file.write_text(SCRAM_PASSWORD + "\n")
        return {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.address("SASL_SSL"),
            "SYNCTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            **tls,
            "SYNCTRAIL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SYNCTRAIL_KAFKA_SASL_USERNAME": "synctrail",
            "SYNCTRAIL_KAFKA_SASL_PASSWORD_FILE": str(password_file),
        }
    if mode == "scram-sha-256":
        secrets = tmp_path / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "SYNCTRAIL_KAFKA_SASL_PASSWORD").write_text(SCRAM_PASSWORD)
        return {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.address("SASL_SSL"),
            "SYNCTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            **tls,
            "SYNCTRAIL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "SYNCTRAIL_KAFKA_SASL_USERNAME": "synctrail",
            "SYNCTRAIL_SECRETS_DIR": str(secrets),
        }
    if mode == "plain":
        return {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.address("SASL_PLAINTEXT"),
            "SYNCTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SYNCTRAIL_KAFKA_SASL_MECHANISM": "PLAIN",
            "SYNCTRAIL_KAFKA_SASL_USERNAME": "synctrail",
            "SYNCTRAIL_KAFKA_SASL_PASSWORD": PLAIN_PASSWORD,
        }
    if mode == "ssl":
        return {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.address("SSL"),
            "SYNCTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL",
            **tls,
        }
    if mode == "mtls":
        return {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.address("MTLS"),
            "SYNCTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL",
            **tls,
            "SYNCTRAIL_KAFKA_SSL_CERTFILE": str(node.tls.client_chain),
            "SYNCTRAIL_KAFKA_SSL_KEYFILE": str(node.tls.client_key),
        }
    raise ValueError(mode)


def settings_from(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **extra: str
) -> CommonSettings:
    for name, value in {**env, **extra}.items():
        monkeypatch.setenv(name, value)
    return CommonSettings()


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> tuple[int, str, float]:
    """``synctrail ARGS`` in a child process: exit code, stdout+stderr, seconds taken."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.cli",
        *args,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        raise AssertionError(
            f"synctrail {' '.join(args)} still running after {timeout}s:\n{out.decode()[-3000:]}"
        ) from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), time.monotonic() - started


# ------------------------------------------------------------------ round trips per mechanism


@pytest.mark.parametrize("mode", ["scram-sha-256", "scram-sha-512", "plain", "ssl", "mtls"])
async def test_records_round_trip_through_the_client_builder(
    apache_kafka: KafkaNode, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    prefix = f"sec{uuid.uuid4().hex[:8]}."
    settings = settings_from(
        security_env(apache_kafka, mode, tmp_path),
        monkeypatch,
        SYNCTRAIL_TOPIC_PREFIX=prefix,
        SYNCTRAIL_PARTITIONS="2",
    )
    assert await preflight(settings) is True
    # admin client (topic creation), producer, consumer group, short-lived end-offset reader
    assert await ensure_topics_for(settings, topics=[SYNC_EVENTS]) == [f"{prefix}sync-events"]
    topic = f"{prefix}sync-events"
    producer = AIOKafkaProducer(**producer_args(settings, acks="all"))
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, orjson.dumps({"i": i}), key=b"k", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **consumer_args(settings, group_id=f"{prefix}group", auto_offset_reset="earliest"),
    )
    await consumer.start()
    try:
        got: list[bytes] = []

        async def three() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            got.extend(m.value for records in batch.values() for m in records)
            return len(got) >= 3

        await wait_for(three, timeout=60, what="3 records back")
        await consumer.commit()
    finally:
        await consumer.stop()
    assert [orjson.loads(v) for v in got] == [{"i": 0}, {"i": 1}, {"i": 2}]
    ends = await true_end_offsets(client_args(settings), [TP(topic, 0), TP(topic, 1)])
    assert ends == {TP(topic, 0): 3, TP(topic, 1): 0}
    # and the records are really there, read over the plaintext listener
    records = await read_topic(apache_kafka.bootstrap, topic)
    assert [r.value for r in records] == [{"i": 0}, {"i": 1}, {"i": 2}]


# ------------------------------------------------------------------ the whole pipeline


async def _whole_pipeline(node: KafkaNode, env: dict[str, str], tmp_path: Path) -> None:
    prefix = f"sec{uuid.uuid4().hex[:8]}."
    worker_id = f"w{uuid.uuid4().hex[:8]}"
    env = {
        **common_env(node.bootstrap, prefix),
        **env,
        "SYNCTRAIL_WORKER_ID": worker_id,
        "SYNCTRAIL_LOG_LEVEL": "INFO",
    }
    # topics create over the secured listener, then --check agrees
    code, out, _ = await run_cli(env, "topics", "create")
    assert code == 0, out
    assert f"created {prefix}sync-events" in out and f"created {worker_id}-apps-changelog" in out
    code, out, _ = await run_cli(env, "topics", "create", "--check")
    # every synctrail topic and the worker's changelog
    assert code == 0 and f"all {len(ALL_TOPICS) + 1} topics exist as configured" in out, out

    sent = [w for w in fixture_webhooks() if w.valid]
    announced = [w for w in sent if w.announced]
    started: list[HttpService | Worker] = []

    def service(name: str, port_var: str, ready: str, **extra: str) -> HttpService:
        from connectors.broker import free_port

        port = free_port()
        process = HttpService(
            [name], {**env, port_var: str(port), **extra}, tmp_path / f"{name}.log", port, ready
        )
        started.append(process)
        process.start()
        return process

    try:
        async with SlackServer() as slack_server:
            bridge = service(
                "bridge",
                "SYNCTRAIL_BRIDGE_PORT",
                "/readyz",
                SYNCTRAIL_BRIDGE_TOKENS=BRIDGE_TOKEN,
                SYNCTRAIL_BRIDGE_SPOOL_DIR=str(tmp_path / "spool"),
            )
            slack = service(
                "slack",
                "SYNCTRAIL_SLACK_METRICS_PORT",
                "/healthz",
                SYNCTRAIL_SLACK_TOKEN=slack_server.token or "",
                SYNCTRAIL_SLACK_API_URL=slack_server.api_url,
                SYNCTRAIL_SLACK_GROUP_ID=f"{prefix}slack",
                SYNCTRAIL_SLACK_RATE_PER_CHANNEL_S="0.05",
                SYNCTRAIL_SLACK_BACKOFF_BASE_S="0.05",
            )
            exporter = service("exporter", "SYNCTRAIL_EXPORTER_PORT", "/readyz")
            worker = Worker(
                {
                    **env,
                    "SYNCTRAIL_WORKER_DATA_DIR": str(tmp_path / "worker-data"),
                    "SYNCTRAIL_WORKER_BATCH_WITHIN_S": "0.01",
                },
                tmp_path / "worker.log",
            )
            started.append(worker)
            worker.start()
            # results are read back over the node's plaintext listener
            pipeline = Pipeline(node.bootstrap, prefix, bridge, worker, slack, exporter)
            await pipeline.wait_ready(timeout=90)

            answers = await pipeline.post(sent)
            assert [a.status for a in answers] == [202] * len(sent), [
                (a.webhook.name, a.status, a.body) for a in answers
            ]
            assert not any(a.body["spooled"] for a in answers)
            await pipeline.wait_worker_done(len(sent))
            deployments = await read_topic(node.bootstrap, f"{prefix}deployments")
            assert len(deployments) == len(announced) == 13
            await wait_for(
                lambda: len(slack_server.posts()) >= len(announced),
                timeout=60,
                what="13 Slack posts",
            )
            await pipeline.wait_slack_idle()
            assert len(slack_server.posts()) == 13

            async def exporter_folded() -> float | None:
                samples = await exporter.samples()
                total = sum(samples.series("synctrail_deployments_total").values())
                return total if total >= 13 else None

            assert await wait_for(exporter_folded, timeout=60, what="exporter: 13") == 13

        # tail, over the secured listener too
        code, out, _ = await run_cli(env, "tail", "deployments", "--from-beginning")
        assert code == 0, out
        tailed = [orjson.loads(line) for line in out.splitlines() if line.startswith('{"key"')]
        assert len(tailed) == 13, out[-3000:]
    finally:
        for process in started:
            process.kill()
            print(f"--- {process.log_path.name} (last lines) ---\n" + process.log()[-4000:])
    protocol = env["SYNCTRAIL_KAFKA_SECURITY_PROTOCOL"]
    for process in started:
        # each process checked its connection at start (for SASL_SSL: a SCRAM exchange with
        # the broker, the listener offers nothing else) and never logged the password
        log = process.log()
        checked = [
            record
            for record in map(
                orjson.loads, filter(lambda line: line.startswith("{"), log.splitlines())
            )
            if record.get("msg") == "kafka connection checked"
        ]
        assert [r["security_protocol"] for r in checked] == [protocol], process.args
        assert SCRAM_PASSWORD not in log


async def test_whole_pipeline_runs_over_sasl_ssl_with_scram_sha_512(
    apache_kafka: KafkaNode, tmp_path: Path
):
    await _whole_pipeline(
        apache_kafka, security_env(apache_kafka, "scram-sha-512", tmp_path), tmp_path
    )


async def test_whole_pipeline_runs_over_mtls(apache_kafka: KafkaNode, tmp_path: Path):
    await _whole_pipeline(apache_kafka, security_env(apache_kafka, "mtls", tmp_path), tmp_path)


# ------------------------------------------------------------------ refused at start


def _wrong_password(node: KafkaNode, tmp_path: Path) -> dict[str, str]:
    env = security_env(node, "scram-sha-512", tmp_path)
    del env["SYNCTRAIL_KAFKA_SASL_PASSWORD_FILE"]
    return {**env, "SYNCTRAIL_KAFKA_SASL_PASSWORD": "not-the-password-0x5f3759df"}


def _unknown_user(node: KafkaNode, tmp_path: Path) -> dict[str, str]:
    return {**_wrong_password(node, tmp_path), "SYNCTRAIL_KAFKA_SASL_USERNAME": "mallory"}


def _wrong_ca(node: KafkaNode, tmp_path: Path) -> dict[str, str]:
    assert node.tls is not None
    env = security_env(node, "ssl", tmp_path)
    return {**env, "SYNCTRAIL_KAFKA_SSL_CAFILE": str(node.tls.other_ca)}


def _no_client_certificate(node: KafkaNode, tmp_path: Path) -> dict[str, str]:
    env = security_env(node, "mtls", tmp_path)
    del env["SYNCTRAIL_KAFKA_SSL_CERTFILE"], env["SYNCTRAIL_KAFKA_SSL_KEYFILE"]
    return env


def _wrong_plain_password(node: KafkaNode, tmp_path: Path) -> dict[str, str]:
    env = security_env(node, "plain", tmp_path)
    return {**env, "SYNCTRAIL_KAFKA_SASL_PASSWORD": "not-the-password-0x5f3759df"}


@pytest.mark.parametrize(
    ("command", "make_env", "names"),
    [
        (["bridge"], _wrong_password, "SYNCTRAIL_KAFKA_SASL_PASSWORD"),
        (["worker"], _unknown_user, "SYNCTRAIL_KAFKA_SASL_USERNAME"),
        (["topics", "create"], _wrong_ca, "SYNCTRAIL_KAFKA_SSL_CAFILE"),
        (["exporter"], _no_client_certificate, "SYNCTRAIL_KAFKA_SSL_CERTFILE"),
        (["tail", "deployments"], _wrong_plain_password, "SYNCTRAIL_KAFKA_SASL_PASSWORD"),
    ],
    ids=[
        "bridge-wrong-password",
        "worker-unknown-user",
        "topics-wrong-ca",
        "exporter-no-cert",
        "tail-wrong-plain-password",
    ],
)
async def test_a_refused_connection_stops_the_process_at_start_naming_the_setting(
    apache_kafka: KafkaNode, tmp_path: Path, command: list[str], make_env, names: str
):
    env = {
        **make_env(apache_kafka, tmp_path),
        "SYNCTRAIL_TOPIC_PREFIX": f"sec{uuid.uuid4().hex[:8]}.",
        "SYNCTRAIL_BRIDGE_TOKENS": BRIDGE_TOKEN,
        "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "SYNCTRAIL_BRIDGE_PORT": "0",
    }
    code, out, seconds = await run_cli(env, *command, timeout=60)
    assert code == EXIT_KAFKA_CONFIG, out
    assert seconds < 30, seconds
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    critical = [line for line in lines if line["level"] == "critical"]
    assert len(critical) == 1, out
    assert names in critical[0]["msg"], critical[0]["msg"]
    assert "kafka connection refused" in critical[0]["msg"]
    for secret in ("not-the-password-0x5f3759df", SCRAM_PASSWORD, PLAIN_PASSWORD):
        assert secret not in out


# ------------------------------------------------------------------ topics create --check


async def test_topics_check_reports_each_mismatch_and_create_leaves_existing_topics_alone(
    apache_kafka: KafkaNode,
):
    prefix = f"chk{uuid.uuid4().hex[:8]}."
    worker_id = f"w{uuid.uuid4().hex[:8]}"
    env = {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": apache_kafka.bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": prefix,
        "SYNCTRAIL_PARTITIONS": "2",
        "SYNCTRAIL_WORKER_ID": worker_id,
    }
    wanted = plan_topics(prefix, 2)
    # sync-events with 3 partitions, policy not compacted, deployments missing
    skewed = {
        f"{prefix}sync-events": TopicPlan(f"{prefix}sync-events", 3, 1),
        f"{prefix}policy": TopicPlan(f"{prefix}policy", 2, 1, compacted=False),
    }
    await create_topics(
        apache_kafka.bootstrap,
        [skewed.get(p.name, p) for p in wanted if p.name != f"{prefix}deployments"],
    )
    code, out, _ = await run_cli(env, "topics", "create", "--check")
    assert code == 1, out
    mismatches = sorted(line for line in out.splitlines() if line.startswith("mismatch: "))
    assert mismatches == [
        f"mismatch: {prefix}deployments: missing",
        f"mismatch: {prefix}policy: cleanup.policy=delete, want compact",
        f"mismatch: {prefix}sync-events: 3 partitions, want 2 (SYNCTRAIL_PARTITIONS)",
        f"mismatch: {worker_id}-apps-changelog: missing",
    ]
    # --check created nothing (a metadata request for a missing topic would have)
    deployments = [p for p in wanted if p.name == f"{prefix}deployments"]
    assert await check_topics(apache_kafka.bootstrap, deployments) == [
        f"{prefix}deployments: missing"
    ]

    code, out, _ = await run_cli(env, "topics", "create")
    assert code == 0, out
    assert sorted(
        line.split()[0] + " " + line.split()[1]
        for line in out.splitlines()
        if line.startswith(("created", "exists"))
    ) == sorted(
        [f"created {prefix}deployments", f"created {worker_id}-apps-changelog"]
        + [f"exists {p.name}" for p in wanted if p.name != f"{prefix}deployments"]
    )
    # existing topics untouched: the skewed ones are still skewed
    assert sorted(await check_topics(apache_kafka.bootstrap, wanted)) == [
        f"{prefix}policy: cleanup.policy=delete, want compact",
        f"{prefix}sync-events: 3 partitions, want 2 (SYNCTRAIL_PARTITIONS)",
    ]
