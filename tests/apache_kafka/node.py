"""Apache Kafka (KRaft, combined broker + controller) from its Maven Central jars, for tests.

``KafkaNode`` is one node; ``KafkaCluster`` is three of them (replication factor 3,
``min.insync.replicas=2``) for the failover tests. Both run on free loopback ports, keep their
data and log in a directory the caller names (a test's temp dir), answer metadata requests
before ``start`` returns (no fixed sleep), and never outlive the Python process that started
them (the JVM gets SIGKILL when its parent dies).

A node made with ``secure=True`` also offers, each as a listener of its own:

=================  ===============  ============================================================
listener           protocol         clients
=================  ===============  ============================================================
``SSL``            SSL              verify the broker with the test CA
``MTLS``           SSL              must also present a certificate the test CA signed
``SASL_SSL``       SASL_SSL         SCRAM-SHA-256 or SCRAM-SHA-512 (users made at format time)
``SASL_PLAINTEXT`` SASL_PLAINTEXT   PLAIN
=================  ===============  ============================================================

The CA, the broker's certificate (for 127.0.0.1 and localhost) and a client certificate are
made at start with ``trustme``; :class:`TestTls` names their PEM files. Inter-broker and
controller traffic stay on plaintext listeners.

The jars come from ``make kafka-jars`` (``tests/apache_kafka/pom.xml``), copied once into
``var/kafka/<version>/``; nothing is downloaded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from connectors.broker import (
    Stallable,
    die_with_parent,
    free_port,
    log_tail,
    run_in_thread,
    terminate,
    wait_until_ready,
)

KAFKA_VERSION = "4.1.1"
REPO = Path(__file__).resolve().parents[2]
JARS = Path(os.environ.get("SYNCTRAIL_KAFKA_JARS", REPO / "var" / "kafka" / KAFKA_VERSION))
HEAP = "-Xmx384m"  # the machines have 2 cores and 24 GB; three nodes must fit beside the tests

# The users the secure listeners know (name -> password). Test-only secrets.
SCRAM_USERS = {"synctrail": "scram-secret-1", "reader": "scram-secret-2"}
PLAIN_USERS = {"synctrail": "plain-secret-1"}

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.auth.name = org.apache.kafka.common.network.Selector
logger.auth.level = INFO
"""


class KafkaNotInstalled(RuntimeError):
    """Java or the broker's jars are missing; the message says how to get them."""


class KafkaStartError(RuntimeError):
    """A node did not come up; the message carries the tail of its log."""


def classpath() -> str:
    """The broker's classpath (every jar of the cache), or a clear error when it is missing."""
    if shutil.which("java") is None:
        raise KafkaNotInstalled(
            "Apache Kafka needs a Java runtime (17+): run `make kafka-jars`, which installs "
            "Debian's default-jdk-headless when missing, or install a JDK yourself"
        )
    if not (JARS / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        raise KafkaNotInstalled(
            f"Apache Kafka {KAFKA_VERSION}'s jars are not in {JARS}: run `make kafka-jars` "
            "(Maven copies them from Maven Central once; tests never download)"
        )
    return f"{JARS}/*"


@dataclass(frozen=True)
class TestTls:
    """PEM files of the test CA, the broker's certificate and one client certificate."""

    ca: Path
    server_chain: Path
    server_key: Path
    client_chain: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: clients trusting it must fail

    @classmethod
    def make(cls, directory: Path) -> TestTls:
        """Make a fresh CA and certificates in ``directory``."""
        import trustme
        from cryptography.hazmat.primitives import serialization

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("synctrail-client@example.test")

        def pkcs8(pem: bytes) -> bytes:
            # Kafka's PEM key store takes PKCS#8 keys only; trustme writes SEC1 EC keys.
            key = serialization.load_pem_private_key(pem, password=None)
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

        files = {
            "ca": ca.cert_pem.bytes(),
            "server_chain": b"".join(blob.bytes() for blob in server.cert_chain_pems),
            "server_key": pkcs8(server.private_key_pem.bytes()),
            "client_chain": b"".join(blob.bytes() for blob in client.cert_chain_pems),
            "client_key": pkcs8(client.private_key_pem.bytes()),
            "other_ca": trustme.CA().cert_pem.bytes(),
        }
        paths = {}
        for name, data in files.items():
            path = directory / f"{name}.pem"
            path.write_bytes(data)
            paths[name] = path
        return cls(**paths)


def _pem_one_line(path: Path) -> str:
    # PEM values inline in a properties file: newlines escaped as \n continuation-free text
    return path.read_text().strip().replace("\n", "\\n")


@dataclass
class KafkaNode(Stallable):
    """One KRaft node (broker and controller in one JVM) on loopback.

    ``voters`` names every controller of the cluster (``{node_id: port}``); a lone node is its
    own. The node keeps its ports and data across :meth:`stop`/:meth:`start`, so a restarted
    node rejoins with its log.
    """

    directory: Path
    node_id: int = 1
    secure: bool = False
    voters: dict[int, int] = field(default_factory=dict)
    cluster_id: str = ""
    replication: int = 1
    host: str = "127.0.0.1"
    extra_config: Mapping[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    tls: TestTls | None = None
    _process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        names = ["PLAINTEXT", "CONTROLLER"]
        if self.secure:
            names += ["SSL", "MTLS", "SASL_SSL", "SASL_PLAINTEXT"]
        for name in names:
            if name not in self.ports:
                taken = {*self.ports.values(), *self.voters.values()}
                self.ports[name] = _free_port_not_in(taken, self.host)
        if not self.voters:
            self.voters = {self.node_id: self.ports["CONTROLLER"]}
        self.cluster_id = self.cluster_id or _random_cluster_id()
        if self.secure and self.tls is None:
            self.tls = TestTls.make(self.directory / "tls")

    # -- addresses -------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the plaintext listener."""
        return self.address("PLAINTEXT")

    def address(self, listener: str) -> str:
        """``host:port`` of a listener (``PLAINTEXT``, ``SSL``, ``MTLS``, ``SASL_SSL``, …)."""
        return f"{self.host}:{self.ports[listener]}"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the node's log, for error messages."""
        return log_tail(self.log_path, lines)

    # -- configuration ---------------------------------------------------------------------

    def properties(self) -> dict[str, str]:
        """The node's ``server.properties``."""
        listeners = {name: port for name, port in self.ports.items()}
        protocol = {
            "PLAINTEXT": "PLAINTEXT",
            "CONTROLLER": "PLAINTEXT",
            "SSL": "SSL",
            "MTLS": "SSL",
            "SASL_SSL": "SASL_SSL",
            "SASL_PLAINTEXT": "SASL_PLAINTEXT",
        }
        min_isr = str(min(2, self.replication))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(
                f"{node}@{self.host}:{port}" for node, port in sorted(self.voters.items())
            ),
            "listeners": ",".join(f"{n}://{self.host}:{p}" for n, p in listeners.items()),
            "advertised.listeners": ",".join(
                f"{n}://{self.host}:{p}" for n, p in listeners.items() if n != "CONTROLLER"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{n}:{protocol[n]}" for n in listeners),
            "log.dirs": str(self.directory / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": min_isr,
            # tests start consumer groups all the time; Kafka's 3 s first-join delay is for
            # production fleets
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.retention.check.interval.ms": "3600000",
        }
        if self.secure:
            assert self.tls is not None
            tls = self.tls
            props.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.certificate.chain": _pem_one_line(tls.server_chain),
                    "ssl.keystore.key": _pem_one_line(tls.server_key),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.certificates": _pem_one_line(tls.ca),
                    "ssl.endpoint.identification.algorithm": "https",
                    "listener.name.mtls.ssl.client.auth": "required",
                    "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                    "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
                    "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                        "org.apache.kafka.common.security.plain.PlainLoginModule required "
                        + " ".join(f'user_{u}="{p}"' for u, p in PLAIN_USERS.items())
                        + ";"
                    ),
                    "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
                }
            )
        props.update(self.extra_config)
        return props

    def _write_config(self) -> Path:
        path = self.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.directory / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _java(self, main: str, *args: str, heap: str = HEAP) -> list[str]:
        # a short-lived tool starts faster on the first JIT tier only
        quick = ["-XX:TieredStopAtLevel=1"] if main != "kafka.Kafka" else []
        return [
            "java",
            heap,
            "-XX:+UseSerialGC",  # one GC thread: the machines have two cores
            *quick,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            classpath(),
            main,
            *args,
        ]

    def format(self) -> None:
        """Format the node's storage (once; a restarted node keeps its log)."""
        if (self.directory / "data" / "meta.properties").exists():
            return
        config = self._write_config()
        args = ["format", "-t", self.cluster_id, "-c", str(config)]
        if self.secure:
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                for user, password in SCRAM_USERS.items():
                    args += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        done = subprocess.run(
            self._java("kafka.tools.StorageTool", *args, heap="-Xmx128m"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise KafkaStartError(
                f"formatting node {self.node_id} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the JVM without waiting for it (a cluster starts its nodes together)."""
        self.format()
        config = self._write_config()
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self._java("kafka.Kafka", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            start_new_session=True,  # a terminal's Ctrl-C must not reach it before its clients
            cwd=self.directory,
        )

    async def wait_ready(self, deadline_s: float = 90.0) -> None:
        """Return once the node answers metadata requests; raise with its log on failure."""
        try:
            await wait_until_ready(self.bootstrap, deadline_s, self.is_running)
        except TimeoutError as exc:
            code = self._process.poll() if self._process else None
            self.kill()
            state = f"exited with {code}" if code is not None else "did not answer"
            raise KafkaStartError(
                f"Apache Kafka node {self.node_id} on {self.bootstrap} {state}: {exc}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            ) from exc

    async def start(self, deadline_s: float = 90.0) -> str:
        """Start the node and wait until it answers; returns the plaintext bootstrap."""
        self.spawn()
        await self.wait_ready(deadline_s)
        return self.bootstrap

    def start_sync(self) -> str:
        """:meth:`start` for callers without an event loop (session fixtures).

        The JVM is spawned from the calling thread: the parent-death signal fires when the
        spawning *thread* exits.
        """
        self.spawn()
        run_in_thread(self.wait_ready())
        return self.bootstrap

    def is_running(self) -> bool:
        """True while the JVM is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), then SIGKILL if it takes longer than ``timeout_s``."""
        proc, self._process = self._process, None
        terminate(proc, timeout_s)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would."""
        proc, self._process = self._process, None
        terminate(proc, None)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> KafkaNode:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaCluster:
    """Three combined KRaft nodes: replication factor 3, ``min.insync.replicas=2``."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        controller_ports: dict[int, int] = {}
        for node in range(1, size + 1):
            controller_ports[node] = _free_port_not_in(set(controller_ports.values()))
        cluster_id = _random_cluster_id()
        self.nodes = [
            KafkaNode(
                directory / f"node-{node}",
                node_id=node,
                voters=controller_ports,
                cluster_id=cluster_id,
                replication=size,
                ports={"CONTROLLER": controller_ports[node]},
            )
            for node in controller_ports
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's plaintext listener, comma-separated."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        """The node with ``node_id``."""
        return next(node for node in self.nodes if node.node_id == node_id)

    async def start(self, deadline_s: float = 120.0) -> str:
        """Start every node and wait until the cluster has all of them as brokers."""
        for node in self.nodes:
            node.spawn()
        await asyncio.gather(*(node.wait_ready(deadline_s) for node in self.nodes))
        await self.wait_brokers(len(self.nodes), deadline_s)
        return self.bootstrap

    def start_sync(self) -> str:
        """:meth:`start` for callers without an event loop."""
        for node in self.nodes:
            node.spawn()

        async def ready() -> None:
            await asyncio.gather(*(node.wait_ready() for node in self.nodes))
            await self.wait_brokers(len(self.nodes), 120.0)

        run_in_thread(ready())
        return self.bootstrap

    async def wait_brokers(self, count: int, deadline_s: float = 60.0) -> None:
        """Return once the cluster's metadata lists ``count`` brokers."""
        deadline = time.monotonic() + deadline_s
        seen = 0
        while time.monotonic() < deadline:
            seen = len(await self.brokers())
            if seen >= count:
                return
            await asyncio.sleep(0.2)
        raise KafkaStartError(f"the cluster lists {seen} brokers after {deadline_s}s, not {count}")

    async def brokers(self) -> set[int]:
        """Ids of the brokers the cluster's metadata lists now (through any live node)."""
        live = ",".join(node.bootstrap for node in self.nodes if node.is_running())
        if not live:
            return set()
        admin = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=3000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return {int(broker["node_id"]) for broker in cluster["brokers"]}
        except (KafkaError, OSError):
            return set()
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def leaders(self, topic: str) -> dict[int, int]:
        """``{partition: leader node id}`` of ``topic``."""
        live = ",".join(node.bootstrap for node in self.nodes if node.is_running())
        admin = AIOKafkaAdminClient(bootstrap_servers=live, request_timeout_ms=5000)
        await admin.start()
        try:
            (description,) = await admin.describe_topics([topic])
            return {p["partition"]: p["leader"] for p in description["partitions"]}
        finally:
            await admin.close()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node."""
        for node in self.nodes:
            node.kill()

    def __iter__(self) -> Iterable[KafkaNode]:  # pragma: no cover - convenience
        return iter(self.nodes)


_HANDED_OUT: set[int] = set()  # ports given to a node in this process (threads: GIL-safe enough)


def _free_port_not_in(taken: set[int], host: str = "127.0.0.1") -> int:
    """A free port that is none of ``taken`` and was given to no other node of this process:
    the kernel may hand a port just probed and released to the next probe, and a node's
    ports are chosen before it listens (Kafka refuses two listeners on one port)."""
    while (port := free_port(host)) in taken or port in _HANDED_OUT:
        pass
    _HANDED_OUT.add(port)
    return port


def _random_cluster_id() -> str:
    # Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding (22 chars)
    import base64

    while True:  # as Kafka's Uuid.randomUuid: one starting with "-" reads as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
