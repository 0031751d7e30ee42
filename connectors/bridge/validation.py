"""Checking webhook bodies against the inbound types of :mod:`streams.domain.inbound` (pure).

The contract is defined once, as msgspec Structs (:class:`~streams.domain.inbound.Envelope`,
:class:`~streams.domain.inbound.SyncResult`). A body is parsed with orjson and the resulting
JSON object converted to those types (``msgspec.convert``): that is the whole check on the hot
path, and the object the record carries on is the one that was checked. Only when the
conversion fails are the same types walked (:func:`problems`, via ``msgspec.inspect``) to name
every problem with the path of its field, e.g.
``syncResult.resources[3].images: expected a list of strings, got string``, so whoever wrote the
notification template can fix it. The messages come from the types: a type's JSON name ("a
string", "a list of resource objects": a Struct's ``noun``), and for a constrained value the
``problem`` function in its metadata (the Kubernetes name rules, the schema version).

Fields the types do not know are kept as they are: Argo CD adds fields over time and the record
carries the syncResult exactly as received.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
import orjson

from streams.domain.inbound import (
    SYNC_RESULT_KEYS,
    Envelope,
    SyncResult,
    name_problem,
    namespace_problem,
)

__all__ = [
    "MAX_PROBLEMS",
    "Rejection",
    "check_bare",
    "check_envelope",
    "check_identity_keys_unique",
    "check_route_identity",
    "envelope_problems",
    "json_type",
    "name_problem",
    "namespace_problem",
    "parse_json_object",
    "problems",
    "sync_result_problems",
]

MAX_PROBLEMS = 20

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


# --- the fast path: the typed conversion ---------------------------------------------------

_convert = msgspec.convert
_ValidationError = msgspec.ValidationError


def looks_like_bare_sync_result(body: dict[str, Any]) -> bool:
    """True for a body that has syncResult keys at the top and no envelope keys."""
    return (
        "app" not in body
        and "schemaVersion" not in body
        and "syncResult" not in body
        and bool(SYNC_RESULT_KEYS & body.keys())
    )


def check_bare(body: dict[str, Any]) -> None:
    """Validate a bare syncResult body; raise a 400 :class:`Rejection` listing every problem."""
    if "syncResult" in body and ("app" in body or "schemaVersion" in body):
        raise Rejection(
            400,
            "body: this is a synctrail envelope (it has `app`/`syncResult`); POST it to /v1/sync",
        )
    try:
        _convert(body, SyncResult)
    except _ValidationError as exc:
        _refuse(problems(body, SyncResult), exc)


def check_envelope(body: dict[str, Any]) -> None:
    """Validate an envelope body; 422 for a bare syncResult, 400 listing every other problem."""
    try:
        _convert(body, Envelope)
    except _ValidationError as exc:
        if looks_like_bare_sync_result(body):
            raise Rejection(422, FIX_BARE_WITHOUT_APP) from None
        _refuse(problems(body, Envelope), exc)


def _refuse(found: list[str], exc: msgspec.ValidationError) -> None:
    if not found:
        # The walk below and msgspec disagree (a test looks for such bodies): never accept what
        # the types refuse; msgspec's own message names the first problem and its path.
        found = [_msgspec_problem(str(exc))]
    raise Rejection(400, "; ".join(found), found) from None


def _msgspec_problem(message: str) -> str:
    text, sep, where = message.rpartition(" - at `$")
    if not sep:
        return f"body: {message}"
    path = where.rstrip("`").lstrip(".")
    return f"{path or 'body'}: {text}"


# --- the slow path: every problem, named from the same types -------------------------------


def envelope_problems(body: dict[str, Any]) -> list[str]:
    """Every problem of an envelope, with field paths (the thorough, slow check)."""
    return problems(body, Envelope)


def sync_result_problems(body: dict[str, Any]) -> list[str]:
    """Every problem of a bare syncResult, with field paths (the thorough, slow check)."""
    return problems(body, SyncResult)


def problems(value: Any, tp: Any) -> list[str]:
    """Every reason (at most :data:`MAX_PROBLEMS`) why ``value`` does not convert to ``tp``.

    Walks ``msgspec.inspect.type_info(tp)``: a field's problem is named at its path, a list of
    Structs item by item (``resources[3].kind``), a list of plain values as a whole
    (``images: expected a list of strings, got list``). Empty when ``value`` converts.
    """
    walk = _Walk()
    walk.value(value, _type_info(tp), "")
    return walk.problems


@cache
def _type_info(tp: Any) -> mi.Type:
    return mi.type_info(tp)


def _article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _noun(t: mi.Type) -> str:
    """What a value of ``t`` is, without an article: "string", "resource object"."""
    if isinstance(t, mi.Metadata):
        return _noun(t.type)
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.IntType):
        return "integer"
    if isinstance(t, mi.FloatType):
        return "number"
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.DictType):
        return "object"
    if isinstance(t, mi.StructType):
        return str(getattr(t.cls, "noun", "object"))
    if isinstance(t, mi.ListType):
        return f"list of {_noun(t.item_type)}s"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.LiteralType):
        return " or ".join(repr(v) for v in t.values)
    if isinstance(t, mi.UnionType):
        # "a string" for a string-or-null: null is always allowed where a union has it
        return " or ".join(_noun(m) for m in t.types if not isinstance(m, mi.NoneType))
    return "value"


def _describe(t: mi.Type) -> str:
    """What a value of ``t`` is, for "expected ...": "a string", "a list of strings"."""
    if isinstance(t, mi.LiteralType):
        return _noun(t)
    return _article(_noun(t))


_JSON_CLASSES: dict[type, tuple[type, ...]] = {
    mi.StrType: (str,),
    mi.IntType: (int,),
    mi.FloatType: (int, float),
    mi.BoolType: (bool,),
    mi.DictType: (dict,),
    mi.StructType: (dict,),
    mi.ListType: (list,),
}


def _is_a(value: Any, t: mi.Type) -> bool:
    """Whether ``value`` has the JSON type of ``t`` (not looking inside it)."""
    if isinstance(t, mi.Metadata):
        return _is_a(value, t.type)
    if isinstance(t, mi.AnyType):
        return True
    if isinstance(t, mi.NoneType):
        return value is None
    if isinstance(t, mi.LiteralType):
        return any(type(value) is type(v) and value == v for v in t.values)
    if isinstance(t, mi.UnionType):
        return any(_is_a(value, m) for m in t.types)
    if isinstance(value, bool) and not isinstance(t, mi.BoolType):
        return False  # JSON true is not a number, though Python's bool is an int
    return isinstance(value, _JSON_CLASSES.get(type(t), ()))


class _Walk:
    """Collects problems (with field paths) while walking a decoded body along a type."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path or 'body'}: {message}")

    @property
    def full(self) -> bool:
        """True once :data:`MAX_PROBLEMS` are named: the rest of the body is not walked."""
        return len(self.problems) >= MAX_PROBLEMS

    def expected(self, path: str, t: mi.Type, value: Any) -> None:
        self.add(path, f"expected {_describe(t)}, got {json_type(value)}")

    def value(self, value: Any, t: mi.Type, path: str, problem: Any = None) -> None:
        if isinstance(t, mi.Metadata):
            extra = t.extra or {}
            self.value(value, t.type, path, extra.get("problem", problem))
        elif isinstance(t, mi.UnionType):
            if value is None and any(isinstance(m, mi.NoneType) for m in t.types):
                return
            for member in t.types:
                if _is_a(value, member):
                    self.value(value, member, path, problem)
                    return
            self.expected(path, t, value)
        elif isinstance(t, mi.LiteralType):
            if not _is_a(value, t):
                if problem is not None:
                    self.add(path, problem(value))
                else:
                    self.expected(path, t, value)
        elif not _is_a(value, t):
            self.expected(path, t, value)
        elif isinstance(t, mi.StructType):
            self.struct(value, t, path)
        elif isinstance(t, mi.ListType):
            self.list(value, t, path)
        elif isinstance(t, mi.DictType):
            if not isinstance(t.value_type, mi.AnyType):
                for key, item in value.items():
                    self.value(item, t.value_type, f"{path}.{key}" if path else key)
        elif isinstance(t, mi.StrType | mi.IntType | mi.FloatType):
            self.constraints(value, t, path, problem)

    def struct(self, obj: dict[str, Any], t: mi.StructType, path: str) -> None:
        for field in t.fields:
            if self.full:
                return
            key = field.encode_name
            at = f"{path}.{key}" if path else key
            if key in obj:
                self.value(obj[key], field.type, at)
            elif field.required:
                self.add(at, f"required field is missing (expected {_describe(field.type)})")

    def list(self, items: list[Any], t: mi.ListType, path: str) -> None:
        item_type = t.item_type
        if isinstance(item_type, mi.StructType):
            for i, item in enumerate(items):
                if self.full:
                    return
                self.value(item, item_type, f"{path}[{i}]")
        else:
            for item in items:
                inner = _Walk()
                inner.value(item, item_type, path)
                if inner.problems:
                    self.expected(path, t, items)
                    break

    def constraints(self, value: Any, t: Any, path: str, problem: Any) -> None:
        """Length, pattern and bounds of a string or number msgspec would check."""
        ok = True
        if isinstance(t, mi.StrType):
            ok = (
                (t.min_length is None or len(value) >= t.min_length)
                and (t.max_length is None or len(value) <= t.max_length)
                and (t.pattern is None or re.search(t.pattern, value) is not None)
            )
        else:
            ok = (
                (t.ge is None or value >= t.ge)
                and (t.gt is None or value > t.gt)
                and (t.le is None or value <= t.le)
                and (t.lt is None or value < t.lt)
            )
        # A problem function also names what the constraints let through and the types still
        # refuse (a timestamp's calendar: `__post_init__`); it answers None for a good value.
        message = problem(value) if problem is not None else None
        if ok and message is None:
            return
        self.add(path, message or f"{value!r} does not meet the constraints of {_noun(t)}s")


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
