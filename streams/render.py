"""Notification text and Block Kit rendering (pure). Placeholder until the Slack issue refines it."""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]


def render_deployment(
    deployment: JsonObject, *, argocd_url: str = ""
) -> tuple[str, list[JsonObject]]:
    """Fallback text and Block Kit blocks for one deployment record."""
    short = (deployment.get("revision") or ",".join(deployment.get("revisions") or []))[:12]
    text = f"{deployment['app_namespace']}/{deployment['app']} deployed {short}"
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def render_violation(
    violation: JsonObject, *, argocd_url: str = ""
) -> tuple[str, list[JsonObject]]:
    """Fallback text and Block Kit blocks for one retroactive policy violation."""
    text = (
        f"{violation['app_namespace']}/{violation['app']} runs {violation['image']}: "
        f"{violation['rule']} ({violation['reason']})"
    )
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
