"""Every Kafka topic synctrail uses, in one place.

Names are ``<prefix><name>``; the prefix comes from ``SYNCTRAIL_TOPIC_PREFIX``. Each topic names
the JSON Schema (in ``schemas/``) of the records it carries, so the docs, the AsyncAPI document
and the tests can all be checked against this table. One topic carries a standard's events
instead of a synctrail schema: ``cdevents`` (:data:`CDEVENTS`), whose ``schema`` names the
CDEvents specification version and whose JSON Schemas are the spec's own, vendored in
``schemas/cdevents/<version>/``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The header of every output record naming the event it came from (see ``streams.replay``).
SOURCE_HEADER = "synctrail-source"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One synctrail topic: its suffix, record schema id, retention policy and content type."""

    name: str
    schema: str
    description: str
    compacted: bool = False
    #: the ``content-type`` header of its records
    content_type: str = "application/json"

    def address(self, prefix: str) -> str:
        """The full topic name for ``prefix``."""
        return f"{prefix}{self.name}"


SYNC_EVENTS = TopicSpec(
    "sync-events",
    "synctrail.sync-event/v1",
    "Raw Argo CD sync results accepted by the bridge, one per delivery.",
)
DEPLOYMENTS = TopicSpec(
    "deployments",
    "synctrail.deployment/v1",
    "One record per announced operation: running images and what changed.",
)
NOTIFICATIONS = TopicSpec(
    "notifications",
    "synctrail.notification/v1",
    "Slack-ready messages (channel, text, blocks) with an idempotency key.",
)
METRICS = TopicSpec(
    "metrics",
    "synctrail.metric/v1",
    "Metric events folded into Prometheus series by the exporter.",
)
VIOLATIONS = TopicSpec(
    "violations",
    "synctrail.violation/v1",
    "One record per image that breaks a policy rule.",
)
REMEDIATIONS = TopicSpec(
    "remediations",
    "synctrail.remediation/v1",
    "Rollback requests for apps that deployed a denylisted image.",
)
POLICY = TopicSpec(
    "policy",
    "synctrail.policy-rule/v1",
    "Policy rules keyed by rule id (compacted; a null value deletes a rule).",
    compacted=True,
)
DEAD_LETTERS = TopicSpec(
    "dead-letters",
    "synctrail.dead-letter/v1",
    "Records that could not be processed, with the reason and the original record.",
)
SLACK_STATE = TopicSpec(
    "slack-state",
    "synctrail.slack-state/v1",
    "Slack connector state keyed by idempotency key: intent/posted/dead-lettered, thread ts "
    "(compacted).",
    compacted=True,
)
CDEVENTS = TopicSpec(
    "cdevents",
    "cdevents/0.5.1",
    "Each successful deployment as a CDEvent (dev.cdevents.service.deployed, upgraded, "
    "rolledback; CDEvents 0.5.1).",
    content_type="application/cdevents+json",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    SYNC_EVENTS,
    DEPLOYMENTS,
    NOTIFICATIONS,
    METRICS,
    VIOLATIONS,
    REMEDIATIONS,
    POLICY,
    DEAD_LETTERS,
    SLACK_STATE,
    CDEVENTS,
)


def by_name(name: str) -> TopicSpec:
    """Look a topic up by its unprefixed name (``deployments``)."""
    for spec in ALL_TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown topic {name!r}; known: {', '.join(t.name for t in ALL_TOPICS)}")
