"""Scrape a /metrics endpoint over HTTP and index its samples for assertions."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """Parsed samples of one scrape: ``value(name, **labels)`` and friends."""

    items: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]

    @classmethod
    def parse(cls, text: str) -> Samples:
        """Parse the Prometheus text exposition format with prometheus_client's parser."""
        items = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                items.append((sample.name, tuple(sorted(sample.labels.items())), sample.value))
        return cls(tuple(items))

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample named ``name`` with exactly ``labels``, or None."""
        wanted = tuple(sorted(labels.items()))
        for sample_name, sample_labels, value in self.items:
            if sample_name == name and sample_labels == wanted:
                return value
        return None

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every sample named ``name``, keyed by its sorted label pairs."""
        return {labels: value for n, labels, value in self.items if n == name}

    def label_values(self, name: str, label: str) -> set[str]:
        """The values ``label`` takes across the samples named ``name``."""
        return {dict(labels)[label] for labels in self.series(name) if label in dict(labels)}


async def scrape(url: str, timeout: float = 5.0) -> Samples:
    """GET ``url`` (a /metrics endpoint) and parse it; raises on a non-200 answer."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        return Samples.parse(await response.text())


async def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET ``url``, or None when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
