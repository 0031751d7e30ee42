"""Notification records for the Slack connector (pure): routing, rendering, idempotency keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streams.domain import records, timestamps
from streams.domain.records import JsonObject
from streams.domain.render import render_deployment, render_violation
from streams.domain.routing import Route, route_channel


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Where messages go and what links they carry."""

    default_channel: str = "#deployments"
    violations_channel: str | None = None
    routes: tuple[Route, ...] = ()
    argocd_url: str = ""


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
    }


def operation_id(deployment: Mapping[str, Any]) -> str:
    """What identifies the operation: Argo CD's startedAt, else the delivery that carried it."""
    return deployment["operation"].get("started_at") or deployment["delivery_id"]


def deployment_notifications(
    deployment: Mapping[str, Any], config: NotifyConfig, now: datetime
) -> list[JsonObject]:
    """One message per deploy to its routed channel, plus a copy to the violations channel."""
    text, blocks = render_deployment(dict(deployment), argocd_url=config.argocd_url)
    app_key = f"{deployment['app_namespace']}/{deployment['app']}"
    key = f"{app_key}:{deployment['fingerprint']}:{operation_id(deployment)}"
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
