"""The worker's own Prometheus series (its ``/metrics``), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    """Events by outcome, processing latency, consumer lag and table sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "synctrail_worker_events_total",
            "Sync events processed, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in (
            "deployed",
            "duplicate",
            "resync",
            "stale",
            "health_transition",
            "replayed",
            "dead_lettered",
        ):
            self.events.labels(outcome)
        self.processing = Histogram(
            "synctrail_worker_processing_seconds",
            "Bridge receipt to records emitted, per event.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "synctrail_worker_batch_seconds",
            "Time to process one batch, outputs and state made durable.",
            registry=self.registry,
        )
        self.lag = Gauge(
            "synctrail_worker_consumer_lag",
            "Records behind the end of each owned sync-events partition.",
            ["partition"],
            registry=self.registry,
        )
        self.table_keys = Gauge(
            "synctrail_worker_table_keys",
            "Keys held in each table on this worker.",
            ["table"],
            registry=self.registry,
        )
        self.retroactive = Counter(
            "synctrail_worker_retroactive_flags_total",
            "Apps flagged when a policy rule was added for an image they already ran.",
            registry=self.registry,
        )
