"""The bridge's loop-only metrics are exported exactly as prometheus_client's own would be."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from connectors.bridge.metrics import _BODY_BUCKETS, _LATENCY_BUCKETS, BridgeMetrics

# Bucket bounds themselves, values between and beyond them: `le` means less than or equal.
_DURATIONS = [0.0, 0.0005, 0.0007, 0.001, 0.004, 0.005, 0.3, 10.0, 12.5]
_SIZES = [1.0, 256.0, 257.0, 2598.0, 4194304.0, 5e6]


def _without_created(text: bytes) -> list[str]:
    # `_created` holds the creation time of each series: the only part that may differ.
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_exposition_matches_prometheus_client() -> None:
    ours = BridgeMetrics()
    reference = CollectorRegistry()
    requests = Counter(
        "synctrail_bridge_requests",
        "HTTP requests by route template and status code.",
        ["route", "status"],
        registry=reference,
    )
    durations = Histogram(
        "synctrail_bridge_request_duration_seconds",
        "Time from request start to response, by route template.",
        ["route"],
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    body_bytes = Histogram(
        "synctrail_bridge_request_body_bytes",
        "Size of accepted-for-reading webhook bodies.",
        buckets=_BODY_BUCKETS,
        registry=reference,
    )
    produce = Histogram(
        "synctrail_bridge_produce_duration_seconds",
        "Time from handing a record to the Kafka producer to its acknowledgement.",
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    deliveries = Counter(
        "synctrail_bridge_deliveries",
        "Webhook deliveries by outcome: published to Kafka, spooled to disk, or rejected.",
        ["outcome"],
        registry=reference,
    )
    for outcome in ("published", "spooled", "rejected"):
        deliveries.labels(outcome)

    for route, status in (("/v1/sync", 202), ("/v1/sync", 400), ("unmatched", 404)):
        for seconds in _DURATIONS:
            ours.request_done(route, status, seconds)
            requests.labels(route, str(status)).inc()
            durations.labels(route).observe(seconds)
    for size in _SIZES:
        ours.body_bytes.observe(size)
        body_bytes.observe(size)
    for seconds in _DURATIONS:
        ours.produce_duration.observe(seconds)
        produce.observe(seconds)
    ours.published.inc()
    ours.published.inc(2)
    ours.rejected.inc()
    deliveries.labels("published").inc(3)
    deliveries.labels("rejected").inc()

    exported = _without_created(generate_latest(ours.registry))
    expected = _without_created(generate_latest(reference))
    assert [line for line in exported if line in expected] == expected
    assert 'synctrail_bridge_request_duration_seconds_bucket{le="0.005",route="/v1/sync"} 12.0' in (
        exported
    )
    assert "synctrail_bridge_requests_created{" in generate_latest(ours.registry).decode()
