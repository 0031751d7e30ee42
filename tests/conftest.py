"""Session fixtures: the real brokers (embedded, Apache Kafka), a fresh topic prefix per test.

``broker`` is the embedded broker everywhere except in ``tests/e2e``, where it is each broker
in turn (``--broker`` picks one). ``apache_kafka`` is one Apache Kafka KRaft node with every
secured listener (see ``tests.apache_kafka.node``), started on first use for the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from tests.apache_kafka.node import KafkaNode

BROKERS = ("embedded", "kafka")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=(*BROKERS, "both"),
        default="both",
        help="which broker the end-to-end tests run on (default: both)",
    )


def brokers_chosen(config: pytest.Config) -> list[str]:
    """The brokers ``--broker`` selects, in the order the suite runs them."""
    chosen = config.getoption("--broker")
    return list(BROKERS) if chosen == "both" else [chosen]


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker, on a free loopback port, for the whole session."""
    embedded = EmbeddedBroker()
    embedded.start_sync()
    yield embedded
    embedded.stop()


@pytest.fixture(scope="session")
def broker(embedded_broker: EmbeddedBroker) -> EmbeddedBroker:
    """The broker of tests outside ``tests/e2e``: the embedded one."""
    return embedded_broker


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaNode]:
    """One Apache Kafka node (KRaft, combined) with plaintext and every secured listener."""
    node = KafkaNode(tmp_path_factory.mktemp("apache-kafka"), secure=True)
    node.start_sync()
    yield node
    node.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(broker: EmbeddedBroker, prefix: str) -> str:
    """Create every synctrail topic under this test's prefix; returns the prefix."""
    await ensure_topics(broker.bootstrap, prefix, partitions=8)
    return prefix
