"""Fold metric events, DORA findings and dead letters into Prometheus series.

Everything here is synchronous and free of I/O: the service feeds record values (bytes) in topic
order and scrapes the registry. Replaying the same topics from the beginning into a fresh
``Folder`` rebuilds the same series, which is how the exporter survives restarts.

Values are decoded with msgspec into :class:`MetricFact`, :class:`DoraFact` and
:class:`DeadLetterFact`: the fields the exporter reads of :class:`streams.domain.records.Metric`,
``DoraEvent`` and ``DeadLetter``, read tolerantly on purpose. A kind the exporter does not know
is counted as ``unknown_kind`` and a component it does not know as ``other`` (a newer worker may
write them), and a field of the wrong type is not folded rather than dropping the whole record,
as before; only a record that is not JSON, not an object, not of one of its two schemas or
without a ``kind`` and a non-empty ``app`` is ``invalid``.

The DORA series (docs/dora.md, "Prometheus metrics"): deployments by result from the metric
events of kind ``deployment``, change failures, lead and recovery time histograms and health
transitions from the ``synctrail.dora/v1`` findings, each deduplicated by its identity.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.domain import dora
from streams.domain.records import DEAD_LETTER_V1, DORA_V1, METRIC_V1, NonEmpty

log = logging.getLogger(__name__)

OTHER_APP = "_other"
KINDS = ("deployment", "duplicate", "resync", "stale", "violation", "dead_letter")
DORA_KINDS = ("health_transition", "change_failure", "lead_time", "recovery")
# Label values of the DORA series: anything else a newer worker writes is "other".
RESULTS = ("succeeded", "failed")
REASONS = ("operation", "degraded", "rollback")
HEALTHS = (dora.DEGRADED, dora.HEALTHY)
OTHER = "other"
COMPONENTS = ("bridge", "worker", "slack", "exporter")
# Received → processed: webhook deliveries usually take tens of milliseconds; a backlog or a
# broker outage can push it to minutes, which must still land in a finite bucket.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class BoundedSet:
    """A set that forgets its least recently added members beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, item: Hashable) -> bool:
        """Add ``item``; False if it was already a member (it becomes the most recent)."""
        if item in self._items:
            self._items.move_to_end(item)
            return False
        self._items[item] = None
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return True

    def __contains__(self, item: Hashable) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)


class MetricFact(msgspec.Struct, tag_field="schema", tag=METRIC_V1):
    """What the exporter reads of a ``synctrail.metric/v1`` event (see the module docstring)."""

    kind: str
    app: NonEmpty
    project: Any = None
    timestamp: Any = None
    delivery_id: Any = None
    latency_seconds: Any = None
    running_images: Any = None
    image_changes: Any = None
    rule: Any = None
    image: Any = None
    phase: Any = None


class DoraFact(msgspec.Struct, tag_field="schema", tag=DORA_V1):
    """What the exporter reads of a ``synctrail.dora/v1`` finding (see the module docstring)."""

    kind: str
    app: NonEmpty
    project: Any = None
    at: Any = None
    health: Any = None
    deployment: Any = None
    revision: Any = None
    reason: Any = None
    seconds: Any = None
    episode: Any = None
    started_at: Any = None


class DeadLetterFact(msgspec.Struct, tag_field="schema", tag=DEAD_LETTER_V1):
    """What the exporter reads of a ``synctrail.dead-letter/v1`` record."""

    component: Any = None
    source_topic: Any = None
    source_partition: Any = None
    source_offset: Any = None


_METRIC = msgspec.json.Decoder(MetricFact | DoraFact)
_DEAD_LETTER = msgspec.json.Decoder(DeadLetterFact)


def decode_metric(raw: bytes | None) -> MetricFact | DoraFact | None:
    """The metric event or DORA finding in ``raw``, or None when it is not one the exporter
    can fold."""
    if raw is None:
        return None
    try:
        return _METRIC.decode(raw)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None


def decode_dead_letter(raw: bytes | None) -> DeadLetterFact | None:
    """The dead letter in ``raw``, or None when it is not one."""
    if raw is None:
        return None
    try:
        return _DEAD_LETTER.decode(raw)
    except msgspec.DecodeError:
        return None


def metric_fact_key(event: MetricFact) -> tuple[Any, ...] | None:
    """The identity of a metric event's fact, or None when it has none to deduplicate on.

    The worker runs at-least-once: after a crash it may emit the same fact again with the same
    delivery id. Events without a delivery id (retroactive violations) cannot be told apart.
    One delivery may break one rule with several images: an ``image`` field, when the event
    carries one, keeps those apart; without it they count as one violation of that rule.
    """
    if not event.delivery_id:
        return None
    return _identity(("metric", event.kind, event.app, event.delivery_id, event.rule, event.image))


def _identity(key: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """``key`` when it can be remembered; None when a field of the wrong type (a list, an
    object) would make it unhashable: such a record is folded, never deduplicated, rather
    than stopping the exporter at the same record after every restart."""
    try:
        hash(key)
    except TypeError:
        return None
    return key


def dora_fact_key(event: DoraFact) -> tuple[Any, ...] | None:
    """The identity of a DORA finding (docs/dora.md), or None when it lacks the fields of one.

    A change failure is one per deployment, a lead time one per deployment and revision, a
    recovery one per episode (its ordinal and start), a health transition one per health and
    time: the worker writes the same finding again, identical, when it replays a fact.
    """
    fields: tuple[Any, ...]
    if event.kind == "change_failure":
        fields = (event.deployment,)
    elif event.kind == "lead_time":
        fields = (event.deployment, event.revision)
    elif event.kind == "recovery":
        fields = (event.episode, event.started_at)
    else:  # health_transition
        fields = (event.health, event.at)
    if any(f is None for f in fields):
        return None
    return _identity(("dora", event.kind, event.app, *fields))


def dead_letter_key(record: DeadLetterFact) -> tuple[Any, ...] | None:
    """The identity of a dead letter: its component and the source record it failed on."""
    if record.source_offset is None or record.source_topic is None:
        return None
    return (
        "dead_letter",
        record.component,
        record.source_topic,
        record.source_partition,
        record.source_offset,
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Folder:
    """The exporter's series and the bounded memory needed to fold events into them."""

    def __init__(self, max_apps: int = 500, dedupe_window: int = 100_000) -> None:
        self.max_apps = max_apps
        self.registry = CollectorRegistry(auto_describe=True)
        self._apps: set[str] = set()
        self._folded = BoundedSet(dedupe_window)
        self._seen = BoundedSet(dedupe_window)
        self._last_deploy: dict[str, float] = {}
        self._dora_touched: set[tuple[str, str]] = set()  # (app, project) with DORA series
        r = self.registry
        self.deployments = Counter(
            "synctrail_deployments_total",
            "Announced operations (deployments), by app and Argo CD project.",
            ["app", "project"],
            registry=r,
        )
        self.image_changes = Counter(
            "synctrail_image_changes_total",
            "Images added, removed or changed by deployments.",
            ["app"],
            registry=r,
        )
        self.duplicates = Counter(
            "synctrail_duplicate_deliveries_total",
            "Repeated webhook deliveries of an operation that were suppressed.",
            ["app"],
            registry=r,
        )
        self.violations = Counter(
            "synctrail_policy_violations_total",
            "Policy violations detected, by app and rule (denylist, unexpected).",
            ["app", "rule"],
            registry=r,
        )
        self.last_deploy = Gauge(
            "synctrail_last_deploy_timestamp_seconds",
            "Unix time of the app's latest deployment.",
            ["app"],
            registry=r,
        )
        self.app_images = Gauge(
            "synctrail_app_images",
            "Images the app runs after its latest deployment or resync.",
            ["app"],
            registry=r,
        )
        self.latency = Histogram(
            "synctrail_end_to_end_latency_seconds",
            "Webhook received by the bridge → deployment emitted by the worker.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "synctrail_dead_letters_total",
            "Records dead-lettered, by the component that gave up on them.",
            ["component"],
            registry=r,
        )
        self.apps_folded = Counter(
            "synctrail_exporter_apps_folded_total",
            'Distinct apps beyond the app cap, reported as app="_other".',
            registry=r,
        )
        self.events = Counter(
            "synctrail_exporter_events_total",
            "Metric events folded, by kind.",
            ["kind"],
            registry=r,
        )
        self.records = Counter(
            "synctrail_exporter_records_total",
            "Records read, by topic and outcome (folded, replay, invalid, unknown_kind).",
            ["topic", "outcome"],
            registry=r,
        )
        for kind in (*KINDS, *DORA_KINDS):
            self.events.labels(kind)
        for component in COMPONENTS:
            self.dead_letters.labels(component)
        self._dora_series()

    def _dora_series(self) -> None:
        """The DORA series (docs/dora.md, "Prometheus metrics")."""
        r = self.registry
        self.dora_deployments = Counter(
            "synctrail_dora_deployments_total",
            "DORA deployments (announced operations), by app, Argo CD project and result "
            "(succeeded, failed: the operation's phase).",
            ["app", "project", "result"],
            registry=r,
        )
        self.dora_change_failures = Counter(
            "synctrail_dora_change_failures_total",
            "Deployments found to be change failures, by the first rule that applies "
            "(operation, degraded, rollback).",
            ["app", "project", "reason"],
            registry=r,
        )
        self.dora_lead_time = Histogram(
            "synctrail_dora_lead_time_seconds",
            "Change lead time: commit date to the finish of the first succeeded deployment "
            "running the revision.",
            ["app", "project"],
            buckets=dora.BUCKETS,
            registry=r,
        )
        self.dora_recovery_time = Histogram(
            "synctrail_dora_recovery_time_seconds",
            "Failed deployment recovery time: the failure episode's start to its recovery.",
            ["app", "project"],
            buckets=dora.BUCKETS,
            registry=r,
        )
        self.dora_health_transitions = Counter(
            "synctrail_dora_health_transitions_total",
            "Health transitions after a deployment (Degraded, Healthy), by app.",
            ["app", "health"],
            registry=r,
        )

    @property
    def tracked_apps(self) -> int:
        """Apps that have a label of their own (at most ``max_apps``)."""
        return len(self._apps)

    def app_label(self, app: str) -> str:
        """The ``app`` label for ``app``: itself while under the cap, else ``_other``."""
        if app in self._apps:
            return app
        if len(self._apps) < self.max_apps:
            self._apps.add(app)
            return app
        if self._folded.add(app):
            self.apps_folded.inc()
        return OTHER_APP

    def fold_metric(self, raw: bytes | None) -> str:
        """Fold one ``<prefix>metrics`` record value; returns the outcome it was counted as."""
        outcome = self._fold_metric(decode_metric(raw))
        self.records.labels("metrics", outcome).inc()
        return outcome

    def _fold_metric(self, value: MetricFact | DoraFact | None) -> str:
        if value is None:
            return "invalid"
        if isinstance(value, DoraFact):
            return self._fold_dora(value)
        kind = value.kind
        if kind not in KINDS:
            return "unknown_kind"
        key = metric_fact_key(value)
        if key is not None and not self._seen.add(key):
            return "replay"
        app = self.app_label(value.app)
        self.events.labels(kind).inc()
        if kind == "deployment":
            self._deployment(app, value)
        elif kind == "resync":
            self._images(app, value)
        elif kind == "duplicate":
            self.duplicates.labels(app).inc()
        elif kind == "violation":
            self.violations.labels(app, str(value.rule or "unknown")).inc()
        # "stale" and "dead_letter" events only count in synctrail_exporter_events_total:
        # dead letters are counted from <prefix>dead-letters, which every component writes.
        return "folded"

    def _fold_dora(self, value: DoraFact) -> str:
        kind = value.kind
        if kind not in DORA_KINDS:
            return "unknown_kind"
        key = dora_fact_key(value)
        if key is not None and not self._seen.add(key):
            return "replay"
        app = self.app_label(value.app)
        project = str(value.project or "")
        self.events.labels(kind).inc()
        if kind == "health_transition":
            health = value.health if value.health in HEALTHS else OTHER
            self.dora_health_transitions.labels(app, health).inc()
        elif kind == "change_failure":
            reason = value.reason if value.reason in REASONS else OTHER
            self.dora_change_failures.labels(app, project, reason).inc()
        else:
            histogram = self.dora_lead_time if kind == "lead_time" else self.dora_recovery_time
            seconds = _number(value.seconds)
            if seconds is not None and seconds >= 0:
                histogram.labels(app, project).observe(seconds)
        return "folded"

    def _touch_dora(self, app: str, project: str) -> None:
        """Create the app's DORA series at 0 with its first deployment: a change failure or
        a lead time then counts in ``increase()`` (a series born at 1 does not), and a rate
        over a range without failures is 0, not a gap. The histograms' 20 series per app are
        the ones docs/dora.md counts."""
        for result in RESULTS:
            self.dora_deployments.labels(app, project, result)
        for reason in REASONS:
            self.dora_change_failures.labels(app, project, reason)
        for health in HEALTHS:
            self.dora_health_transitions.labels(app, health)
        self.dora_lead_time.labels(app, project)
        self.dora_recovery_time.labels(app, project)

    def _deployment(self, app: str, event: MetricFact) -> None:
        project = str(event.project or "")
        self.deployments.labels(app, project).inc()
        # docs/dora.md: every phase but Succeeded is a failed deployment; a deployment event
        # without a phase (none the worker writes) is a succeeded one, as a bare body's is.
        result = "succeeded" if event.phase in (None, "Succeeded") else "failed"
        if (app, project) not in self._dora_touched:
            self._dora_touched.add((app, project))
            self._touch_dora(app, project)
        self.dora_deployments.labels(app, project, result).inc()
        changes = _number(event.image_changes)
        # Touch the series even at zero so "no image changed" is a visible 0, not a gap.
        self.image_changes.labels(app).inc(max(changes or 0.0, 0.0))
        timestamp = _number(event.timestamp)
        if timestamp is not None and timestamp > self._last_deploy.get(app, float("-inf")):
            # max(), not last-written: replays and reordered partitions never move it back.
            self._last_deploy[app] = timestamp
            self.last_deploy.labels(app).set(timestamp)
        latency = _number(event.latency_seconds)
        if latency is not None and latency >= 0:
            self.latency.observe(latency)
        self._images(app, event)

    def _images(self, app: str, event: MetricFact) -> None:
        running = _number(event.running_images)
        # The folded bucket mixes many apps: a per-app image count means nothing there.
        if running is not None and app != OTHER_APP:
            self.app_images.labels(app).set(running)

    def fold_dead_letter(self, raw: bytes | None) -> str:
        """Fold one ``<prefix>dead-letters`` record value; returns its outcome."""
        outcome = self._fold_dead_letter(decode_dead_letter(raw))
        self.records.labels("dead-letters", outcome).inc()
        return outcome

    def _fold_dead_letter(self, value: DeadLetterFact | None) -> str:
        if value is None:
            return "invalid"
        key = dead_letter_key(value)
        if key is not None and not self._seen.add(key):
            return "replay"
        component = value.component
        self.dead_letters.labels(component if component in COMPONENTS else "other").inc()
        return "folded"
