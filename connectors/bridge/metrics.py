"""Prometheus metrics of one bridge instance (its own registry, so tests can run several).

The series a request touches (request count and duration, body size, produce duration,
deliveries) are kept by :class:`LoopHistogram` and :class:`LoopCounter`: plain counters for the
one thread that runs the event loop, exported by a collector at scrape time exactly as
prometheus_client's own Counter and Histogram would export them. prometheus_client takes a lock
for every bucket, sum and counter update, which cost several microseconds per request:
measured for issue 16 with the same five updates per request, 2.5 us more in a tight loop, and
4-11 us more of the bridge's 135-185 us of CPU time per request (about 3-6%) with both bridges
running at once under the same wrk load in alternating slices; the bench's bridge_ratio could
not tell them apart on a loaded machine. A test checks the exposition against
prometheus_client's own.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric
from prometheus_client.utils import floatToGoString

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


class LoopCounter:
    """A counter series updated from the event loop thread only (no lock)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative)."""
        self.value += amount


class LoopHistogram:
    """A histogram series updated from the event loop thread only (no lock)."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """Series of one metric family by label values, and their exposition."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)

    def _labels(self, values: Iterable[str]) -> dict[str, str]:
        return dict(zip(self.labelnames, values, strict=True))


class CounterFamily(_Family):
    """Exported like ``prometheus_client.Counter``: ``<name>_total`` and ``<name>_created``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._series: dict[tuple[str, ...], LoopCounter] = {}

    def labels(self, *values: str) -> LoopCounter:
        """The series for these label values (created at 0 on first use)."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LoopCounter()
        return series

    def collect(self) -> Metric:
        """The family with its samples as they are now."""
        metric = Metric(self.name, self.documentation, "counter")
        for values, series in self._series.items():
            labels = self._labels(values)
            metric.add_sample(f"{self.name}_total", labels, series.value)
            metric.add_sample(f"{self.name}_created", labels, series.created)
        return metric


class HistogramFamily(_Family):
    """Exported like ``prometheus_client.Histogram`` (cumulative buckets, count, sum, created)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._les = [floatToGoString(b) for b in (*self.bounds, math.inf)]
        self._series: dict[tuple[str, ...], LoopHistogram] = {}

    def labels(self, *values: str) -> LoopHistogram:
        """The series for these label values (created empty on first use)."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LoopHistogram(self.bounds)
        return series

    def collect(self) -> Metric:
        """The family with its samples as they are now."""
        metric = Metric(self.name, self.documentation, "histogram")
        for values, series in self._series.items():
            labels = self._labels(values)
            total = 0.0
            for le, count in zip(self._les, series.counts, strict=True):
                total += count
                metric.add_sample(f"{self.name}_bucket", {"le": le, **labels}, total)
            metric.add_sample(f"{self.name}_count", labels, total)
            metric.add_sample(f"{self.name}_sum", labels, series.sum)
            metric.add_sample(f"{self.name}_created", labels, series.created)
        return metric


class _LoopCollector:
    """Hands the loop-only families to the registry at scrape time."""

    def __init__(self, families: Sequence[CounterFamily | HistogramFamily]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return [family.collect() for family in self._families]


class BridgeMetrics:
    """Every series the bridge exports on ``GET /metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = CounterFamily(
            "synctrail_bridge_requests",
            "HTTP requests by route template and status code.",
            ["route", "status"],
        )
        self.request_duration = HistogramFamily(
            "synctrail_bridge_request_duration_seconds",
            "Time from request start to response, by route template.",
            _LATENCY_BUCKETS,
            ["route"],
        )
        body_bytes = HistogramFamily(
            "synctrail_bridge_request_body_bytes",
            "Size of accepted-for-reading webhook bodies.",
            _BODY_BUCKETS,
        )
        produce_duration = HistogramFamily(
            "synctrail_bridge_produce_duration_seconds",
            "Time from handing a record to the Kafka producer to its acknowledgement.",
            _LATENCY_BUCKETS,
        )
        self.body_bytes = body_bytes.labels()
        self.produce_duration = produce_duration.labels()
        self.deliveries = CounterFamily(
            "synctrail_bridge_deliveries",
            "Webhook deliveries by outcome: published to Kafka, spooled to disk, or rejected.",
            ["outcome"],
        )
        self.published = self.deliveries.labels("published")
        self.spooled = self.deliveries.labels("spooled")
        self.rejected = self.deliveries.labels("rejected")
        self._by_route: dict[tuple[str, int], tuple[LoopCounter, LoopHistogram]] = {}
        r.register(
            _LoopCollector(
                [
                    self.requests,
                    self.request_duration,
                    body_bytes,
                    produce_duration,
                    self.deliveries,
                ]
            )
        )
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
        self.connections_closed = Counter(
            "synctrail_bridge_connections_closed",
            "Client connections the bridge closed: request head or body past its deadline "
            "(head_timeout, body_timeout), or shed at the connection bound (shed).",
            ["reason"],
            registry=r,
        )
        for reason in ("head_timeout", "body_timeout", "shed"):
            self.connections_closed.labels(reason)
        self.connections = Gauge(
            "synctrail_bridge_connections", "Client connections open now.", registry=r
        )

    def request_done(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        series = self._by_route.get((route, status))
        if series is None:
            series = self._by_route[(route, status)] = (
                self.requests.labels(route, str(status)),
                self.request_duration.labels(route),
            )
        series[0].value += 1
        series[1].observe(seconds)

    def watch_spool(self, records: Callable[[], float], size: Callable[[], float]) -> None:
        """Read the spool gauges from the spool itself at scrape time."""
        self.spool_records.set_function(records)
        self.spool_bytes.set_function(size)
