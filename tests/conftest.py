"""Session fixtures: one real embedded broker per test session, a fresh topic prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from connectors.broker import EmbeddedBroker, ensure_topics


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker, on a free loopback port, for the whole session."""
    embedded = EmbeddedBroker()
    embedded.start_sync()
    yield embedded
    embedded.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(broker: EmbeddedBroker, prefix: str) -> str:
    """Create every synctrail topic under this test's prefix; returns the prefix."""
    await ensure_topics(broker.bootstrap, prefix, partitions=8)
    return prefix
