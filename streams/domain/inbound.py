"""The inbound contract: what Argo CD POSTs to the bridge, as typed definitions (pure).

Two body shapes (docs/contract-http.md):

- :class:`Envelope`, ``POST /v1/sync``: the app's identity, the operation's metadata and the
  ``syncResult``;
- :class:`SyncResult`, the bare body of ``POST /v1/sync/{app_namespace}/{app}`` (exactly
  ``{{toJson .app.status.operationState.syncResult}}``), also the envelope's ``syncResult``.

These msgspec Structs are the one definition of the contract: the bridge validates bodies
against them (``connectors.bridge.validation``: a typed conversion on the hot path, and a walk
over these same types to name every problem when it fails), and the JSON Schemas of the contract
are generated from them (:data:`SCHEMA_TYPES`). Fields are declared in the order problems are
reported.

Unknown fields are accepted everywhere (``forbid_unknown_fields`` is off: Argo CD adds fields
over time). A Struct keeps only the fields it knows, so the bridge validates with these types
but carries the ``syncResult`` on as the JSON object it received, unknown keys included.

An optional field without a default is :data:`msgspec.UNSET` when absent ("may be left out";
the record tells "absent" from "empty" for ``revision``/``revisions``). Metadata ``extra``:
``problem`` is a function naming what is wrong with a value the type refuses (the Kubernetes
name rules, the schema version); ``noun`` on a Struct names its objects in messages. A Struct's
docstring is its schema's description (plain text).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from streams.domain import timestamps
from streams.domain.records import JsonObject

# Kubernetes object names (RFC 1123 subdomain) and namespaces (RFC 1123 label). They become
# Kafka keys (`<namespace>/<name>`), so nothing else may pass: no `/`, no upper case, no spaces.
# `$(?!\n)`: Python's `$` (msgspec and jsonschema use `re.search`) also matches before a final
# newline, which would let "guestbook\n" through; in ECMA-262 the look-ahead is always true.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
NAMESPACE_PATTERN = rf"^(?:{_LABEL})?$(?!\n)"  # "" is allowed: it means the default namespace
NAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$(?!\n)"
NAMESPACE_MAX = 63
NAME_MAX = 253
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)

SCHEMA_VERSION = 1


def namespace_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes namespace, or ``None`` if it is."""
    if len(value) > NAMESPACE_MAX:
        return f"{value!r} is longer than {NAMESPACE_MAX} characters"
    if not value or not _NAMESPACE_RE.search(value):
        return (
            f"{value!r} is not a valid Kubernetes namespace "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )
    return None


def _app_namespace_problem(value: str) -> str | None:
    return namespace_problem(value) if value else None


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes object name, or ``None`` if it is."""
    if len(value) > NAME_MAX:
        return f"{value!r} is longer than {NAME_MAX} characters"
    if not _NAME_RE.search(value):
        return (
            f"{value!r} is not a valid Kubernetes name "
            "(lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    return None


# RFC 3339 date-time (section 5.6) with its offset, as Argo CD and Go's time.RFC3339 write it:
# `2026-07-06T09:13:42Z`, `2026-07-06T09:13:42.123+02:00`. The pattern checks the syntax and the
# ranges of the parts (msgspec and the JSON Schema check it); `timestamps.parse` the calendar
# (`2026-02-30T...` matches the pattern and is refused by the types' `__post_init__`).
RFC3339_PATTERN = (
    r"^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(?:\.\d+)?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$(?!\n)"
)
_RFC3339_RE = re.compile(RFC3339_PATTERN)


def timestamp_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 3339 timestamp (date, time and offset), or ``None`` if it is:
    the pattern's syntax, then :func:`streams.domain.timestamps.parse` for the calendar."""
    if _RFC3339_RE.search(value) is None or timestamps.parse(value) is None:
        return f"{value!r} is not an RFC 3339 timestamp (e.g. 2026-07-06T09:13:42Z)"
    return None


def _schema_version_problem(value: Any) -> str:
    return f"unsupported version {value!r} (this bridge reads {SCHEMA_VERSION})"


KubernetesName = Annotated[
    str,
    Meta(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX,
        description="A Kubernetes object name (RFC 1123 subdomain).",
        extra={"problem": name_problem},
    ),
]
AppNamespace = Annotated[
    str,
    Meta(
        pattern=NAMESPACE_PATTERN,
        max_length=NAMESPACE_MAX,
        description=(
            "The Application object's namespace (RFC 1123 label); missing or empty means the "
            "bridge's SYNCTRAIL_DEFAULT_APP_NAMESPACE."
        ),
        extra={"problem": _app_namespace_problem},
    ),
]
Timestamp = Annotated[
    str,
    Meta(
        pattern=RFC3339_PATTERN,
        description="An RFC 3339 timestamp with its offset, e.g. 2026-07-06T09:13:42Z.",
        extra_json_schema={"format": "date-time"},
        extra={"problem": timestamp_problem},
    ),
]
SchemaVersion = Annotated[
    Literal[1],
    Meta(
        description="The envelope's version; 1, the only one this bridge reads.",
        extra={"problem": _schema_version_problem},
    ),
]


class _Inbound(Struct, rename="camel", forbid_unknown_fields=False):
    """Base of the inbound types: camelCase keys as Argo CD spells them, unknown keys ignored."""

    noun: ClassVar[str] = "object"


class Resource(_Inbound, kw_only=True):
    """
    One resource the sync operation applied (Argo CD's ResourceResult). `group` and `namespace`
    are "" for the core group and for cluster-scoped objects.
    """

    noun: ClassVar[str] = "resource object"

    group: str
    version: str
    kind: str
    namespace: str
    name: str
    status: str | UnsetType = UNSET
    message: str | UnsetType = UNSET
    hook_type: str | UnsetType = UNSET
    hook_phase: str | UnsetType = UNSET
    sync_phase: str | UnsetType = UNSET
    images: list[str] | UnsetType = UNSET


class SyncResult(_Inbound, kw_only=True):
    """
    An Argo CD syncResult: the bare body, or the envelope's `syncResult`. Nothing in it is
    required; it is carried on exactly as received, unknown keys included.
    """

    resources: list[Resource] | UnsetType = UNSET
    revision: str | UnsetType = UNSET
    revisions: list[str] | UnsetType = UNSET
    source: JsonObject | UnsetType = UNSET
    sources: list[JsonObject] | UnsetType = UNSET
    managed_namespace_metadata: JsonObject | UnsetType = UNSET


class App(_Inbound, kw_only=True):
    """The Argo CD Application's identity; the Kafka key is `<namespace>/<name>`."""

    name: KubernetesName
    namespace: AppNamespace = ""
    project: str | None = None
    uid: str | None = None


class Destination(_Inbound, kw_only=True):
    """Where the Application deploys to (`server` or cluster `name`; "" when unset)."""

    server: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    namespace: str | UnsetType = UNSET


class Operation(_Inbound, kw_only=True):
    """The sync operation (`.status.operationState`); `startedAt` identifies it."""

    phase: str
    started_at: str
    message: str | None = None
    finished_at: str | None = None
    initiated_by: JsonObject | None = None
    retry_count: int = 0


class Commit(_Inbound, kw_only=True):
    """
    The git commit the operation deployed, as Argo CD's `repo.GetCommitMetadata` tells it (the
    shipped template fills it for single-source git apps only); `message` is truncated.
    """

    noun: ClassVar[str] = "commit object"

    revision: str
    date: Timestamp
    author: str | UnsetType = UNSET
    message: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        _check_calendar(self.date)


def _check_calendar(value: str) -> None:
    # The pattern (checked before this runs) leaves only the calendar: 2026-02-30 matches it.
    if timestamps.parse(value) is None:
        raise ValueError(timestamp_problem(value))


class Envelope(_Inbound, kw_only=True):
    """
    The synctrail envelope, POST /v1/sync: one Argo CD sync operation of one app. "" in
    `app.project`, `app.uid`, `operation.finishedAt`, `health` and `syncStatus` means unknown
    (stored as null); `revision` and `revisions` are taken from `syncResult` when left out.
    `observedAt` (when the notification was rendered) and `commit` may be left out.
    """

    schema_version: SchemaVersion = 1
    app: App
    destination: Destination | None = None
    operation: Operation
    health: str | None = None
    sync_status: str | None = None
    revision: str | UnsetType = UNSET
    revisions: list[str] | UnsetType = UNSET
    sync_result: SyncResult | None = None
    observed_at: Timestamp | UnsetType = UNSET
    commit: Commit | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.observed_at is not UNSET:
            _check_calendar(self.observed_at)


# Keys that only a bare syncResult has at its top level: they tell a bare body sent to the
# envelope route (422, fixable in the template) from an envelope with a missing `app` (400).
SYNC_RESULT_KEYS = frozenset(f.encode_name for f in msgspec.structs.fields(SyncResult))

# The bare routes' body: a SyncResult that is not plainly an envelope (`syncResult` together with
# `app` or `schemaVersion`: the bridge answers 400 "POST it to /v1/sync"). The rule is in the
# schema only; converting to this type is converting to SyncResult.
BareSyncResult = Annotated[
    SyncResult,
    Meta(
        extra_json_schema={
            "not": {
                "required": ["syncResult"],
                "anyOf": [{"required": ["app"]}, {"required": ["schemaVersion"]}],
            }
        }
    ),
]

# (file name under schemas/, type, description) of the inbound contract's JSON Schemas, in the
# shape of the schema generator's registry entries (streams.domain.schemas). The inbound objects
# are open (unknown fields are accepted): a generator must not close them.
SCHEMA_TYPES: tuple[tuple[str, Any, str], ...] = (
    (
        "envelope.v1.json",
        Envelope,
        "The body of POST /v1/sync: one Argo CD sync operation of one application "
        "(docs/contract-http.md). Unknown fields are accepted anywhere.",
    ),
    (
        "sync-result.v1.json",
        BareSyncResult,
        "The body of POST /v1/sync/{app_namespace}/{app} and /v1/sync/{app}: Argo CD's "
        "syncResult as {{toJson .app.status.operationState.syncResult}} renders it "
        "(docs/contract-http.md). Unknown fields are accepted anywhere; a body that has "
        "`syncResult` together with `app` or `schemaVersion` is an envelope and refused.",
    ),
)
