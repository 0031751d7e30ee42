"""Notification records for the Slack connector (pure): routing, rendering, idempotency keys.

Three kinds: ``deployment`` (every announced operation, :func:`deployment_notifications`),
``violation`` (a retroactive policy violation, :func:`violation_notification`) and ``health``
(a health transition after a deploy, :func:`health_notification`), which names the
deployment's message in ``thread_under`` so the connector can reply in its thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.domain import records, timestamps
from streams.domain.dora import digest
from streams.domain.records import JsonObject
from streams.domain.render import render_deployment, render_health, render_violation
from streams.domain.routing import Route, route_channel


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Where messages go and what links they carry."""

    default_channel: str = "#deployments"
    violations_channel: str | None = None
    routes: tuple[Route, ...] = ()
    argocd_url: str = ""
    health: bool = True  # SYNCTRAIL_NOTIFY_HEALTH: announce Degraded / back to Healthy


def _channel(config: NotifyConfig, subject: Mapping[str, Any]) -> str:
    destination = subject.get("destination") or {}
    return route_channel(
        config.routes,
        config.default_channel,
        app=subject["app"],
        app_namespace=subject["app_namespace"],
        project=subject.get("project"),
        namespace=destination.get("namespace"),
    )


def _record(
    kind: str,
    key: str,
    channel: str,
    text: str,
    blocks: list[JsonObject],
    subject: Mapping[str, Any],
    now: datetime,
    **payload: Any,
) -> JsonObject:
    return {
        "schema": records.NOTIFICATION_V1,
        "idempotency_key": key,
        "kind": kind,
        "app": subject["app"],
        "app_namespace": subject["app_namespace"],
        "project": subject.get("project"),
        "channel": channel,
        "text": text,
        "blocks": blocks,
        "deployment": payload.get("deployment"),
        "violation": payload.get("violation"),
        "created_at": timestamps.format_datetime(now),
        "thread_under": payload.get("thread_under"),
    }


def operation_id(deployment: Mapping[str, Any]) -> str:
    """What identifies the operation: Argo CD's startedAt, else the delivery that carried it."""
    return deployment["operation"].get("started_at") or deployment["delivery_id"]


def deployment_key(app_key: str, fingerprint: str, operation: str) -> str:
    """The idempotency key of a deployment's message: ``<ns>/<app>:<fingerprint>:<operation>``
    (``operation``: :func:`operation_id`)."""
    return f"{app_key}:{fingerprint}:{operation}"


def deployment_notifications(
    deployment: Mapping[str, Any], config: NotifyConfig, now: datetime
) -> list[JsonObject]:
    """One message per deploy to its routed channel, plus a copy to the violations channel."""
    text, blocks = render_deployment(dict(deployment), argocd_url=config.argocd_url)
    app_key = f"{deployment['app_namespace']}/{deployment['app']}"
    key = deployment_key(app_key, deployment["fingerprint"], operation_id(deployment))
    channel = _channel(config, deployment)
    out = [
        _record(
            "deployment", key, channel, text, blocks, deployment, now, deployment=dict(deployment)
        )
    ]
    if deployment.get("violations") and config.violations_channel not in (None, "", channel):
        out.append(
            _record(
                "deployment",
                f"{key}:{config.violations_channel}",
                str(config.violations_channel),
                text,
                blocks,
                deployment,
                now,
                deployment=dict(deployment),
            )
        )
    return out


def violation_notification(
    violation: Mapping[str, Any], state: Mapping[str, Any], config: NotifyConfig, now: datetime
) -> JsonObject:
    """The message for a retroactive violation (a rule added for an image already running)."""
    text, blocks = render_violation(dict(violation), argocd_url=config.argocd_url)
    subject = {**violation, "destination": state.get("destination")}
    key = f"{violation['app_namespace']}/{violation['app']}:violation:{violation['rule_id']}:{violation['image']}"
    channel = config.violations_channel or _channel(config, subject)
    return _record("violation", key, channel, text, blocks, subject, now, violation=dict(violation))


#: The two healths a health message announces (see :func:`_announced`).
DEGRADED, HEALTHY = "Degraded", "Healthy"


def _announced(transition: Mapping[str, Any]) -> bool:
    """Degraded, or Healthy right after Degraded (a deploy turning Healthy is no news)."""
    if transition.get("schema") != records.DORA_V1 or transition.get("kind") != "health_transition":
        return False
    health = transition.get("health")
    return health == DEGRADED or (
        health == HEALTHY and transition.get("previous_health") == DEGRADED
    )


def deployment_message_key(state: Mapping[str, Any], deployment: str | None) -> str | None:
    """The idempotency key of the message of the deployment ``deployment`` (its delivery id, or
    the DORA history's digest of it), found in the app's history; None when it is not there."""
    if not deployment:
        return None
    app_key = f"{state['app_namespace']}/{state['app']}"
    for entry in reversed(state.get("history") or ()):
        delivery_id = entry.get("delivery_id")
        if delivery_id and deployment in (delivery_id, digest(delivery_id)):
            operation = entry.get("started_at") or delivery_id
            return deployment_key(app_key, entry["fingerprint"], operation)
    return None


def health_notification(
    transition: Mapping[str, Any], state: Mapping[str, Any], config: NotifyConfig, now: datetime
) -> JsonObject | None:
    """The message for a health transition after a deploy, or None.

    ``transition`` is a ``synctrail.dora/v1`` record of kind ``health_transition``, ``state``
    the app's state after it. None when ``config.health`` is off and for transitions that are
    not news (see :func:`_announced`). The message goes to the app's routed channel (where its
    deployment messages go) and names the deployment's message in ``thread_under``. Its key,
    ``<ns>/<app>:health:<deployment>:<health>:<delivery id>``, is the same on every replay of
    the transition and differs from every other transition's.
    """
    if not config.health or not _announced(transition):
        return None
    text, blocks = render_health(dict(transition), state, argocd_url=config.argocd_url)
    app_key = f"{state['app_namespace']}/{state['app']}"
    deployment = transition.get("deployment")
    which = transition.get("delivery_id") or transition["at"]
    key = f"{app_key}:health:{deployment}:{transition['health']}:{which}"
    return _record(
        "health",
        key,
        _channel(config, state),
        text,
        blocks,
        state,
        now,
        thread_under=deployment_message_key(state, deployment),
    )
