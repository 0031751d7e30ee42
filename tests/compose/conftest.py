"""Fixtures for the compose/Prometheus tests: a real Prometheus factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from tests.compose.promharness import BinaryMissing, RealPrometheus, Target, binary

StartPrometheus = Callable[[Sequence[Target]], Awaitable[RealPrometheus]]


@pytest.fixture
async def real_prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    """``await real_prometheus([Target(job, "127.0.0.1:port"), ...])`` → a started Prometheus
    whose targets are all up; every instance is stopped after the test."""
    try:
        binary("prometheus")
    except BinaryMissing as exc:
        pytest.fail(str(exc))
    started: list[RealPrometheus] = []

    async def start(targets: Sequence[Target]) -> RealPrometheus:
        prometheus = RealPrometheus(tmp_path / f"prometheus-{len(started)}", targets)
        started.append(prometheus)
        return await prometheus.start()

    yield start
    for prometheus in started:
        prometheus.stop()
