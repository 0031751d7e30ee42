"""CDEvents for downstream consumers: a deployment record as ``dev.cdevents.service.*`` (pure).

The CDEvents specification (version :data:`SPEC_VERSION`, whose JSON Schemas are vendored in
``schemas/cdevents/``) names what happens to a *service* in an *environment*: ``deployed`` (a new
instance), ``upgraded`` (an existing one to a new version), ``rolledback`` (to a previous one).
:func:`service_event` maps one ``synctrail.deployment/v1`` record onto them:

- **Which event.** Only a ``Succeeded`` operation deployed anything; a ``Failed`` or ``Error``
  one gives no CDEvent (nor do duplicates and resyncs, which give no deployment record). The
  first successful deploy of the app into its environment is ``service.deployed``; a later one
  is ``service.rolledback`` when the record's ``rollback`` flag is set, else
  ``service.upgraded``. "Deployed before into this environment" is a fact of the app's state,
  passed in (``deployed_before``); :func:`environments_after` keeps it, as the list
  ``environments`` of the worker's app state, and :func:`known_environments` reads it back
  (seeding it for a state written before synctrail kept it: see there).
- **Service** (``subject.id``): the Argo CD Application, ``<app namespace>/<app name>``.
- **Environment** (``subject.content.environment.id``, :func:`environment_id`): the Argo CD
  destination: its cluster (``server``, the API server URL, or when that is empty the cluster
  ``name``), then ``/`` and the destination ``namespace`` when there is one; e.g.
  ``https://kubernetes.default.svc/guestbook`` or ``prod-eu/ingress-nginx``. A record without a
  destination (an app only ever sent bare bodies) gives no CDEvent: the environment is
  required and synctrail does not invent one.
- **Artifact** (``subject.content.artifactId``, :func:`image_purl`): an image as a package URL of
  the ``oci`` type, ``pkg:oci/<name>@<digest>?repository_url=<registry>/<path>&tag=<tag>`` (name
  = last path segment, version = the digest when the reference has one, qualifiers sorted).
  CDEvents gives a service event one ``artifactId``; an app runs several images, so
  :func:`artifact_image` picks one: the first image this deployment changed (``to`` of
  ``images_changed``), else the first it added, else the first it runs; the record's lists are
  sorted, so the choice is deterministic. Every running image's purl is in
  ``customData.artifactIds``. An app that runs no image (only config objects) gives no CDEvent.
  The spec would also allow one event per changed image, each image its own service; that
  would make config-only deploys (new revision, same images) invisible, so it is not done.
- **Context**: ``id`` a UUID v5 (in ``cloudevents.ID_NAMESPACE``) of
  ``dev.cdevents.service <delivery_id>`` (so the same deployment always
  gives the same id, across replays, whatever its event type), ``source`` given by the caller
  (``SYNCTRAIL_EVENT_SOURCE``), ``timestamp`` the operation's ``finished_at`` (else, for bare
  bodies, when the bridge received it), ``specversion`` :data:`SPEC_VERSION`.

Package URLs are those ``packageurl-python`` (the purl project's own Python implementation)
gives, built without it on the hot path (:func:`image_purl`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from streams.domain.cloudevents import is_rfc3339, uuid5
from streams.domain.images import parse_image
from streams.domain.records import JsonObject

SPEC_VERSION = "0.5.1"
SERVICE_DEPLOYED = "dev.cdevents.service.deployed.0.3.0"
SERVICE_UPGRADED = "dev.cdevents.service.upgraded.0.3.0"
SERVICE_ROLLEDBACK = "dev.cdevents.service.rolledback.0.3.0"
#: Each event type's JSON Schema in ``schemas/cdevents/<SPEC_VERSION>/``.
SCHEMA_FILES = {
    SERVICE_DEPLOYED: "servicedeployed.json",
    SERVICE_UPGRADED: "serviceupgraded.json",
    SERVICE_ROLLEDBACK: "servicerolledback.json",
}


def environment_id(destination: Mapping[str, Any] | None) -> str | None:
    """The CDEvents environment id of an Argo CD destination, or ``None`` when it has no cluster.

    ``<server or name>/<namespace>``, or the cluster alone when the namespace is empty.
    """
    if not destination:
        return None
    cluster = destination.get("server") or destination.get("name")
    if not cluster:
        return None
    namespace = destination.get("namespace")
    return f"{cluster}/{namespace}" if namespace else str(cluster)


_NOTHING_TO_QUOTE = re.compile(r"[A-Za-z0-9._~/:-]*")


def _quote(text: str) -> str:
    # packageurl's quoting: percent-encoding with '/' and ':' left as they are (the regex: what
    # it leaves alone, i.e. almost every image reference, without urllib's work)
    return text if _NOTHING_TO_QUOTE.fullmatch(text) else quote(text, safe="/:")


@functools.lru_cache(maxsize=4096)
def image_purl(reference: str) -> str:
    """The ``pkg:oci`` package URL of an image reference (normalised first, as Docker does).

    ``nginx`` → ``pkg:oci/nginx?repository_url=docker.io/library/nginx&tag=latest``. Raises
    ``InvalidImageReference`` for a reference that does not parse.

    The string ``packageurl.PackageURL(type="oci", name=..., version=<digest>, qualifiers=
    {"repository_url": ..., "tag": ...}).to_string()`` gives (a property test compares them
    on generated references), written out here: the library's normalisation cost 60-100 µs per
    new reference, and every deployment of a new tag is one.
    """
    ref = parse_image(reference)
    purl = "pkg:oci/" + _quote(ref.path.rsplit("/", 1)[-1])  # the path is lower-case
    if ref.digest is not None:
        purl += "@" + _quote(ref.digest).lower()
    purl += "?repository_url=" + _quote(ref.repository)
    return purl if ref.tag is None else purl + "&tag=" + _quote(ref.tag)


def artifact_image(deployment: Mapping[str, Any]) -> str | None:
    """The image a deployment's CDEvent names: first changed, else first added, else first run."""
    for change in deployment.get("images_changed") or ():
        return str(change["to"])
    for image in deployment.get("images_added") or ():
        return str(image)
    for image in deployment.get("images") or ():
        return str(image)
    return None


def event_type(deployment: Mapping[str, Any], *, deployed_before: bool) -> str | None:
    """``service.deployed``/``upgraded``/``rolledback`` for a deployment, ``None`` if it failed."""
    if (deployment.get("operation") or {}).get("phase") != "Succeeded":
        return None
    if not deployed_before:
        return SERVICE_DEPLOYED
    return SERVICE_ROLLEDBACK if deployment.get("rollback") else SERVICE_UPGRADED


def event_id(deployment: Mapping[str, Any]) -> str:
    """The CDEvent's ``context.id``: a UUID v5 of the deployment's delivery id."""
    return uuid5(f"dev.cdevents.service {deployment['delivery_id']}".encode())


def _timestamp(deployment: Mapping[str, Any]) -> str:
    finished = (deployment.get("operation") or {}).get("finished_at")
    return str(finished) if is_rfc3339(finished) else str(deployment["received_at"])


def service_event(
    deployment: Mapping[str, Any], *, deployed_before: bool, source: str
) -> JsonObject | None:
    """The CDEvent of a ``synctrail.deployment/v1`` record, or ``None`` when there is none.

    ``deployed_before``: whether the app had a successful deploy into this deployment's
    environment before (:func:`deployed_before`). ``source``: the CDEvents/CloudEvents source,
    a URI reference naming this synctrail installation.
    """
    type_ = event_type(deployment, deployed_before=deployed_before)
    environment = environment_id(deployment.get("destination"))
    artifact = artifact_image(deployment)
    if type_ is None or environment is None or artifact is None:
        return None
    return {
        "context": {
            "specversion": SPEC_VERSION,
            "id": event_id(deployment),
            "source": source,
            "type": type_,
            "timestamp": _timestamp(deployment),
        },
        "subject": {
            "id": f"{deployment['app_namespace']}/{deployment['app']}",
            "content": {
                "environment": {"id": environment},
                "artifactId": image_purl(artifact),
            },
        },
        "customData": {
            "app": deployment["app"],
            "appNamespace": deployment["app_namespace"],
            "project": deployment.get("project"),
            "destination": deployment.get("destination"),
            "revision": deployment.get("revision"),
            "revisions": list(deployment.get("revisions") or []),
            "artifactIds": [image_purl(i) for i in deployment.get("images") or ()],
            "deliveryId": deployment["delivery_id"],
        },
        "customDataContentType": "application/json",
    }


def deployed_before(environments: Iterable[str], deployment: Mapping[str, Any]) -> bool:
    """Whether ``environments`` (the app state's list) holds this deployment's environment."""
    environment = environment_id(deployment.get("destination"))
    return environment is not None and environment in environments


def environments_after(environments: Iterable[str], deployment: Mapping[str, Any]) -> list[str]:
    """The app state's environment list after ``deployment``: its environment added (sorted)
    when the operation succeeded. Keep it in the app's state for :func:`deployed_before`."""
    known = set(environments)
    environment = environment_id(deployment.get("destination"))
    if environment is not None and (deployment.get("operation") or {}).get("phase") == "Succeeded":
        known.add(environment)
    return sorted(known)


def known_environments(state: Mapping[str, Any] | None) -> list[str]:
    """The environments an app's stored state says it had a successful deployment into.

    ``state["environments"]``, kept with :func:`environments_after`. A state written before
    synctrail kept that list (no ``environments`` key: an app last decided by an older worker)
    is seeded from what it does record: when it has a successful deployment (``last_success``),
    the environment of its ``destination``, the last one known. So the first deployment after
    an upgrade of an app already running there is ``upgraded`` (or ``rolledback``), not
    ``deployed``; one into another destination is ``deployed``. Where the seed can be wrong: an
    app whose last recorded destination is not where its last success ran (the destination
    changed in a failed operation before the upgrade) counts that destination as deployed to.
    """
    if not state:
        return []
    known = state.get("environments")
    if known is not None:
        return list(known)
    if state.get("last_success") is None:
        return []
    environment = environment_id(state.get("destination"))
    return [] if environment is None else [environment]
