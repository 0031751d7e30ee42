"""Which Slack channel a message goes to (pure): ordered glob rules, first match wins."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

_FIELDS = ("app", "project", "namespace")


class RoutingError(ValueError):
    """A routing rule that cannot be parsed; the message names the rule."""


@dataclass(frozen=True, slots=True)
class Route:
    """Send messages whose ``field`` matches ``pattern`` to ``channel``."""

    field: str
    pattern: str
    channel: str


def parse_routes(spec: str) -> tuple[Route, ...]:
    """Parse ``field:glob=#channel`` rules separated by commas (``SYNCTRAIL_SLACK_ROUTES``)."""
    routes = []
    for raw in filter(None, (part.strip() for part in spec.split(","))):
        selector, sep, channel = raw.partition("=")
        field, colon, pattern = selector.partition(":")
        if not sep or not colon or not channel.strip() or not pattern.strip():
            raise RoutingError(f"routing rule {raw!r}: expected field:glob=#channel")
        if field.strip() not in _FIELDS:
            raise RoutingError(f"routing rule {raw!r}: field must be one of {', '.join(_FIELDS)}")
        routes.append(Route(field.strip(), pattern.strip(), channel.strip()))
    return tuple(routes)


def route_channel(
    routes: tuple[Route, ...],
    default: str,
    *,
    app: str,
    app_namespace: str,
    project: str | None,
    namespace: str | None,
) -> str:
    """The channel for an app: the first matching rule's, else ``default``.

    An ``app`` pattern matches the qualified name (``argocd/guestbook``) or the bare name.
    """
    for route in routes:
        if route.field == "app":
            hit = fnmatchcase(f"{app_namespace}/{app}", route.pattern) or fnmatchcase(
                app, route.pattern
            )
        elif route.field == "project":
            hit = fnmatchcase(project or "", route.pattern)
        else:
            hit = fnmatchcase(namespace or "", route.pattern)
        if hit:
            return route.channel
    return default
