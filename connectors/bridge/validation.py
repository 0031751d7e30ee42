"""Checking webhook bodies: the envelope and the bare syncResult (pure functions).

Every problem is reported with the path of the offending field, e.g.
``syncResult.resources[3].images: expected a list of strings, got string``, so whoever wrote the
notification template can fix it. Fields this module does not know are kept as they are: Argo CD
adds fields over time and the record carries the syncResult exactly as received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

MAX_PROBLEMS = 20

# Kubernetes object names (RFC 1123 subdomain) and namespaces (RFC 1123 label). They become
# Kafka keys (`<namespace>/<name>`), so nothing else may pass: no `/`, no upper case, no spaces.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAMESPACE_RE = re.compile(rf"^{_LABEL}$")
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_NAMESPACE_MAX = 63
_NAME_MAX = 253

# Keys that only a bare syncResult has at its top level; used to tell a bare body sent to the
# envelope route (422, fixable in the template) from an envelope with a missing `app` (400).
_SYNC_RESULT_KEYS = frozenset(
    {"resources", "revision", "revisions", "source", "sources", "managedNamespaceMetadata"}
)

FIX_BARE_WITHOUT_APP = (
    "this is a bare syncResult without an application: nothing says which app it belongs to. "
    "Fix the notification template: either use the synctrail envelope template "
    "(POST /v1/sync, see deploy/argocd-notifications-cm.yaml), or keep the bare body and set "
    "the webhook `path: /v1/sync/{{.app.metadata.namespace}}/{{.app.metadata.name}}`."
)


class Rejection(Exception):
    """A body or route the bridge refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or [message]


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode ``raw`` as one UTF-8 JSON object or raise a 400 :class:`Rejection`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if raw.lstrip()[:1] not in (b"{", b"[", b'"') and raw.strip():
            hint = (
                " (the body looks like plain text: the Argo CD template probably has only a "
                "`message:` and no `webhook.<name>.body`)"
            )
        raise Rejection(400, f"body is not valid JSON: {exc}{hint}") from None
    if not isinstance(value, dict):
        raise Rejection(400, f"body: expected a JSON object, got {json_type(value)}")
    return value


IDENTITY_KEYS = frozenset({"app", "name", "namespace"})
# The envelope's `app` object when it holds no nested object or brace: the common case, checked
# on its own bytes instead of the whole body's.
_FLAT_APP_OBJECT = re.compile(rb'"app"\s*:\s*(\{[^{}]*\})')


def check_identity_keys_unique(raw: bytes) -> None:
    """400 when an identity key (``app``, ``name``, ``namespace``) appears twice in one object.

    orjson, like most JSON readers, keeps the last of two equal keys and others keep the first,
    so two readers of such a body could disagree on which app it is. The check costs a byte
    count for a body without ``"app"``, and a regular-expression match and a few byte counts
    for a usual envelope; the ``app`` object is parsed again only when a key may repeat there,
    and the whole body only when it is unusual (several ``"app"`` tokens, nested objects in
    ``app``).
    """
    count = raw.count(b'"app"')
    if count == 0:
        return
    if count == 1:
        flat = _FLAT_APP_OBJECT.search(raw)
        if flat is not None:
            app = flat.group(1)
            # the usual envelope: each key at most once, spelt without escapes (b"\\u" could
            # spell one differently); only otherwise are the app object's few bytes parsed
            if app.count(b'"name"') <= 1 and app.count(b'"namespace"') <= 1 and b"\\u" not in app:
                return
            _refuse_duplicate_identity_keys(app, "app.")
            return
    _refuse_duplicate_identity_keys(raw, "")


def _refuse_duplicate_identity_keys(text: bytes, where: str) -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in IDENTITY_KEYS:
                if key in seen:
                    place = f"`{where}{key}`" if where else f"`{key}` (in one object)"
                    raise Rejection(
                        400,
                        f"body: the key {place} appears twice; JSON readers disagree on which "
                        "one counts, so the delivery is refused",
                    )
                seen.add(key)
        return {}  # the values are not needed: only the keys are checked

    try:
        json.loads(text, object_pairs_hook=pairs)
    except ValueError:  # orjson already accepted the body; nothing more to say here
        return


def namespace_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes namespace, or ``None`` if it is."""
    if len(value) > _NAMESPACE_MAX:
        return f"{value!r} is longer than {_NAMESPACE_MAX} characters"
    if not _NAMESPACE_RE.match(value):
        return (
            f"{value!r} is not a valid Kubernetes namespace "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )
    return None


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes object name, or ``None`` if it is."""
    if len(value) > _NAME_MAX:
        return f"{value!r} is longer than {_NAME_MAX} characters"
    if not _NAME_RE.match(value):
        return (
            f"{value!r} is not a valid Kubernetes name "
            "(lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    return None


class _Checker:
    """Collects problems (with field paths) while walking a decoded body."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path}: {message}")

    def expect(
        self,
        obj: dict[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], bool],
        what: str,
        *,
        required: bool = False,
    ) -> bool:
        """Check ``obj[key]`` with ``check``; returns True when present and valid."""
        field = f"{path}.{key}" if path else key
        if key not in obj:
            if required:
                self.add(field, f"required field is missing (expected {what})")
            return False
        value = obj[key]
        if not check(value):
            self.add(field, f"expected {what}, got {json_type(value)}")
            return False
        return True


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_str_or_null(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


def _is_obj_or_null(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_obj_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


_RESOURCE_REQUIRED = ("group", "version", "kind", "namespace", "name")
_RESOURCE_OPTIONAL_STR = ("status", "message", "hookType", "hookPhase", "syncPhase")


def _check_sync_result(c: _Checker, obj: dict[str, Any], path: str) -> None:
    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    if "resources" in obj:
        resources = obj["resources"]
        if not isinstance(resources, list):
            c.add(
                at("resources"), f"expected a list of resource objects, got {json_type(resources)}"
            )
        else:
            for i, res in enumerate(resources):
                rpath = f"{at('resources')}[{i}]"
                if not isinstance(res, dict):
                    c.add(rpath, f"expected a resource object, got {json_type(res)}")
                    continue
                for key in _RESOURCE_REQUIRED:
                    c.expect(res, key, rpath, _is_str, "a string", required=True)
                for key in _RESOURCE_OPTIONAL_STR:
                    c.expect(res, key, rpath, _is_str, "a string")
                c.expect(res, "images", rpath, _is_str_list, "a list of strings")
    c.expect(obj, "revision", path, _is_str, "a string")
    c.expect(obj, "revisions", path, _is_str_list, "a list of strings")
    c.expect(obj, "source", path, _is_obj, "an object")
    c.expect(obj, "sources", path, _is_obj_list, "a list of objects")
    c.expect(obj, "managedNamespaceMetadata", path, _is_obj, "an object")


_MISSING: Any = object()
_NO_STRINGS: list[str] = []


def _str_list_ok(value: Any) -> bool:
    if value.__class__ is not list:
        return False
    for item in value:  # noqa: SIM110 - a plain loop is faster than all() here
        if item.__class__ is not str:
            return False
    return True


def _resources_ok(resources: Any) -> bool:
    if resources.__class__ is not list:
        return False
    for res in resources:
        if res.__class__ is not dict:
            return False
        get = res.get
        # The fields of _RESOURCE_REQUIRED (missing: None) and _RESOURCE_OPTIONAL_STR (missing:
        # ""), unrolled into one chained comparison: a third faster than looping over them.
        if not (
            get("group").__class__
            is get("version").__class__
            is get("kind").__class__
            is get("namespace").__class__
            is get("name").__class__
            is get("status", "").__class__
            is get("message", "").__class__
            is get("hookType", "").__class__
            is get("hookPhase", "").__class__
            is get("syncPhase", "").__class__
            is str
        ):
            return False
        images = get("images", _NO_STRINGS)
        if images is not _NO_STRINGS and not _str_list_ok(images):
            return False
    return True


def _sync_result_ok(obj: dict[str, Any]) -> bool:
    """True if ``obj`` is a valid syncResult: a fast check that builds no messages.

    Must accept exactly what :func:`_check_sync_result` accepts; when it says no, the slow
    checker runs to name every problem.
    """
    get = obj.get
    resources = get("resources", _MISSING)
    if resources is not _MISSING and not _resources_ok(resources):
        return False
    value = get("revision", _MISSING)
    if value is not _MISSING and value.__class__ is not str:
        return False
    value = get("revisions", _MISSING)
    if value is not _MISSING and not _str_list_ok(value):
        return False
    for key in ("source", "managedNamespaceMetadata"):
        value = get(key, _MISSING)
        if value is not _MISSING and value.__class__ is not dict:
            return False
    value = get("sources", _MISSING)
    if value is not _MISSING:
        if value.__class__ is not list:
            return False
        for item in value:
            if item.__class__ is not dict:
                return False
    return True


_STR_OR_NULL = frozenset({str, type(None)})
_OBJ_OR_NULL = frozenset({dict, type(None)})


def _envelope_ok(body: dict[str, Any]) -> bool:
    """Fast acceptance check of an envelope (see :func:`_sync_result_ok`)."""
    version = body.get("schemaVersion", 1)
    if version.__class__ is not int or version != 1:
        return False
    app = body.get("app")
    if app.__class__ is not dict:
        return False
    name = app.get("name")
    if name.__class__ is not str or name_problem(name) is not None:
        return False
    namespace = app.get("namespace", "")
    if namespace.__class__ is not str or (namespace and namespace_problem(namespace)):
        return False
    # A missing optional field reads as a value of an accepted type ("", None or 0).
    if not (
        app.get("project").__class__ in _STR_OR_NULL and app.get("uid").__class__ in _STR_OR_NULL
    ):
        return False
    dest = body.get("destination")
    if dest is not None and not (
        dest.__class__ is dict
        and dest.get("server", "").__class__
        is dest.get("name", "").__class__
        is dest.get("namespace", "").__class__
        is str
    ):
        return False
    op = body.get("operation")
    if op.__class__ is not dict:
        return False
    if not (
        op.get("phase").__class__ is op.get("startedAt").__class__ is str
        and op.get("message").__class__ in _STR_OR_NULL
        and op.get("finishedAt").__class__ in _STR_OR_NULL
        and op.get("initiatedBy").__class__ in _OBJ_OR_NULL
        and op.get("retryCount", 0).__class__ is int
        and body.get("health").__class__ in _STR_OR_NULL
        and body.get("syncStatus").__class__ in _STR_OR_NULL
        and body.get("revision", "").__class__ is str
    ):
        return False
    revisions = body.get("revisions", _MISSING)
    if revisions is not _MISSING and not _str_list_ok(revisions):
        return False
    sync_result = body.get("syncResult")
    if sync_result is None:
        return True
    return sync_result.__class__ is dict and _sync_result_ok(sync_result)


def looks_like_bare_sync_result(body: dict[str, Any]) -> bool:
    """True for a body that has syncResult keys at the top and no envelope keys."""
    return (
        "app" not in body
        and "schemaVersion" not in body
        and "syncResult" not in body
        and bool(_SYNC_RESULT_KEYS & body.keys())
    )


def check_bare(body: dict[str, Any]) -> None:
    """Validate a bare syncResult body; raise a 400 :class:`Rejection` listing every problem."""
    if "syncResult" in body and ("app" in body or "schemaVersion" in body):
        raise Rejection(
            400,
            "body: this is a synctrail envelope (it has `app`/`syncResult`); POST it to /v1/sync",
        )
    if _sync_result_ok(body):
        return
    _raise_if(sync_result_problems(body))


def sync_result_problems(body: dict[str, Any]) -> list[str]:
    """Every problem of a bare syncResult, with field paths (the thorough, slow check)."""
    c = _Checker()
    _check_sync_result(c, body, "")
    return c.problems


def check_envelope(body: dict[str, Any]) -> None:
    """Validate an envelope body; 422 for a bare syncResult, 400 listing every other problem."""
    if _envelope_ok(body):
        return
    if looks_like_bare_sync_result(body):
        raise Rejection(422, FIX_BARE_WITHOUT_APP)
    _raise_if(envelope_problems(body))


def envelope_problems(body: dict[str, Any]) -> list[str]:
    """Every problem of an envelope, with field paths (the thorough, slow check)."""
    c = _Checker()
    if "schemaVersion" in body and body["schemaVersion"] != 1:
        c.add(
            "schemaVersion", f"unsupported version {body['schemaVersion']!r} (this bridge reads 1)"
        )
    if c.expect(body, "app", "", _is_obj, "an object", required=True):
        app = body["app"]
        if c.expect(app, "name", "app", _is_str, "a string", required=True):
            problem = name_problem(app["name"])
            if problem:
                c.add("app.name", problem)
        if c.expect(app, "namespace", "app", _is_str, "a string") and app["namespace"]:
            problem = namespace_problem(app["namespace"])
            if problem:
                c.add("app.namespace", problem)
        c.expect(app, "project", "app", _is_str_or_null, "a string")
        c.expect(app, "uid", "app", _is_str_or_null, "a string")
    if c.expect(body, "destination", "", _is_obj_or_null, "an object") and body["destination"]:
        for key in ("server", "name", "namespace"):
            c.expect(body["destination"], key, "destination", _is_str, "a string")
    if c.expect(body, "operation", "", _is_obj, "an object", required=True):
        op = body["operation"]
        c.expect(op, "phase", "operation", _is_str, "a string", required=True)
        c.expect(op, "startedAt", "operation", _is_str, "a string", required=True)
        c.expect(op, "message", "operation", _is_str_or_null, "a string")
        c.expect(op, "finishedAt", "operation", _is_str_or_null, "a string")
        c.expect(op, "initiatedBy", "operation", _is_obj_or_null, "an object")
        c.expect(op, "retryCount", "operation", _is_int, "an integer")
    c.expect(body, "health", "", _is_str_or_null, "a string")
    c.expect(body, "syncStatus", "", _is_str_or_null, "a string")
    c.expect(body, "revision", "", _is_str, "a string")
    c.expect(body, "revisions", "", _is_str_list, "a list of strings")
    if c.expect(body, "syncResult", "", _is_obj_or_null, "an object") and body["syncResult"]:
        _check_sync_result(c, body["syncResult"], "syncResult")
    return c.problems


def check_route_identity(namespace: str, name: str) -> None:
    """Validate the app identity taken from a bare route; 400 naming the path segment."""
    problems = []
    ns_problem = namespace_problem(namespace)
    if ns_problem:
        problems.append(f"path {{app_namespace}}: {ns_problem}")
    n_problem = name_problem(name)
    if n_problem:
        problems.append(f"path {{app}}: {n_problem}")
    if problems:
        raise Rejection(400, "; ".join(problems), problems)


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise Rejection(400, "; ".join(problems), problems)
