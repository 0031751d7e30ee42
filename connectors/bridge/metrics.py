"""Prometheus metrics of one bridge instance (its own registry, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BODY_BUCKETS = tuple(float(2**n) for n in range(8, 23, 2))  # 256 B .. 4 MiB


class BridgeMetrics:
    """Every series the bridge exports on ``GET /metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "synctrail_bridge_requests",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "synctrail_bridge_request_duration_seconds",
            "Time from request start to response, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "synctrail_bridge_request_body_bytes",
            "Size of accepted-for-reading webhook bodies.",
            buckets=_BODY_BUCKETS,
            registry=r,
        )
        self.produce_duration = Histogram(
            "synctrail_bridge_produce_duration_seconds",
            "Time from handing a record to the Kafka producer to its acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "synctrail_bridge_deliveries",
            "Webhook deliveries by outcome: published to Kafka, spooled to disk, or rejected.",
            ["outcome"],
            registry=r,
        )
        # Label children resolved once: labels() costs a lock and a dict build per call.
        self.published = self.deliveries.labels("published")
        self.spooled = self.deliveries.labels("spooled")
        self.rejected = self.deliveries.labels("rejected")
        self._by_route: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.spool_records = Gauge(
            "synctrail_bridge_spool_records", "Records waiting in the spool.", registry=r
        )
        self.spool_bytes = Gauge(
            "synctrail_bridge_spool_bytes", "Bytes of records waiting in the spool.", registry=r
        )
        self.spool_drained = Counter(
            "synctrail_bridge_spool_drained",
            "Spooled records delivered to Kafka.",
            registry=r,
        )
        self.broker_up = Gauge(
            "synctrail_bridge_broker_up",
            "1 while the bridge can reach Kafka, 0 while it spools.",
            registry=r,
        )

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        children = self._by_route.get((route, status))
        if children is None:
            children = self._by_route[(route, status)] = (
                self.requests.labels(route, str(status)),
                self.request_duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch_spool(self, records: Callable[[], float], size: Callable[[], float]) -> None:
        """Read the spool gauges from the spool itself at scrape time."""
        self.spool_records.set_function(records)
        self.spool_bytes.set_function(size)
