"""Private Faust, mode and aiokafka names are reached for in two modules only.

``streams/faust_fixes.py`` (and, for the processes without Faust,
``streams/kafka/aiokafka_fixes.py``) hold every reach into a private upstream attribute, each
fingerprinted in ``tests/streams/test_upstream_fingerprints.py``. This scan of ``streams/`` and
``connectors/`` fails when one appears anywhere else:

- ``from faust... import _name`` (or a private module of faust, mode or aiokafka);
- ``something._name`` on anything but ``self``/``cls`` (the receiver's type is unknown to a
  scan, so our own classes' private names used across objects are allowed below, by name);
- ``getattr``/``setattr``/``hasattr``/``delattr`` with a private name;
- in a class derived from a Faust, mode or aiokafka class: a method with a private name (an
  override of a private upstream method), ``super()._name``, or ``self._name`` (which may be
  the upstream class's), unless allowed below as our own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parents[2]
UPSTREAM_PACKAGES = ("faust", "mode", "aiokafka")
#: where the reaches live, each behind a named function or class
GUARDED = {"streams/faust_fixes.py", "streams/kafka/aiokafka_fixes.py"}

#: (file, what the scan reports) -> why it is not a reach into Faust, mode or aiokafka
ALLOWED: dict[tuple[str, str], str] = {
    ("streams/agents.py", "os._exit"): "the standard library's documented immediate exit",
    ("streams/transactions.py", "os._exit"): "the standard library's documented immediate exit",
    ("connectors/cli.py", "argparse._SubParsersAction"): (
        "the standard library's type of add_subparsers(), named only for annotations"
    ),
    ("connectors/bridge/connections.py", "self.guard._opened"): (
        "our ConnectionGuard's own method, called by its GuardedProtocol"
    ),
    ("connectors/bridge/connections.py", "self.guard._closed"): (
        "our ConnectionGuard's own method, called by its GuardedProtocol"
    ),
    ("connectors/bridge/connections.py", "self.guard._close"): (
        "our ConnectionGuard's own method, called by its GuardedProtocol"
    ),
    ("streams/codec.py", "OrjsonCodec._dumps"): (
        "Faust's documented codec interface: a Codec subclass implements _dumps and _loads "
        "(faust.serializers.codecs reference)"
    ),
    ("streams/codec.py", "OrjsonCodec._loads"): (
        "Faust's documented codec interface: a Codec subclass implements _dumps and _loads "
        "(faust.serializers.codecs reference)"
    ),
    ("streams/app.py", "DurableTable: self._changelog"): (
        "our own queue of changelog writes; Faust's Collection has no attribute of that name"
    ),
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _upstream_module(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in UPSTREAM_PACKAGES  # type: ignore[union-attr]


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_super_call(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def reaches(source: str) -> Iterator[str]:
    """What a module reaches for that may be a private upstream name (see the docstring)."""
    tree = ast.parse(source)
    upstream_names: set[str] = set()  # names bound to upstream modules and classes
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _upstream_module(alias.name):
                    upstream_names.add((alias.asname or alias.name).split(".")[0])
                    yield from (
                        f"import {alias.name}"
                        for part in alias.name.split(".")
                        if _is_private(part)
                    )
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            ours_wrapping_upstream = module == "streams.faust_fixes" or any(
                a.name == "faust_fixes" for a in node.names
            )
            if _upstream_module(module) or ours_wrapping_upstream:
                for alias in node.names:
                    upstream_names.add(alias.asname or alias.name)
                    if _is_private(alias.name) and _upstream_module(module):
                        yield f"from {module} import {alias.name}"
                if any(_is_private(part) for part in module.split(".")):
                    yield f"from {module} import ..."
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    derived = _derived_classes(classes, upstream_names)
    for name in sorted(derived):
        yield from _class_reaches(classes[name])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            receiver = node.value
            if (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")) or (
                _is_super_call(receiver)  # ours unless the class is derived (seen there)
            ):
                continue
            yield ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            yield f"{node.func.id}(..., {node.args[1].value!r})"


def _derived_classes(classes: dict[str, ast.ClassDef], upstream_names: set[str]) -> set[str]:
    """The module's classes derived from an upstream class, and the module's own mixins those
    are built from (their methods end up in the same class)."""
    derived: set[str] = set()
    while True:
        more = {
            name
            for name, cls in classes.items()
            if any(_root_name(base) in upstream_names | derived for base in cls.bases)
        }
        more |= {
            base_name
            for name in more
            for base in classes[name].bases
            if (base_name := _root_name(base)) in classes
        }
        if more <= derived:
            return derived
        derived |= more


def _class_reaches(cls: ast.ClassDef) -> Iterator[str]:
    seen: set[str] = set()
    for node in ast.walk(cls):
        found = None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _is_private(node.name):
            found = f"{cls.name}.{node.name}"
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            if _is_super_call(node.value):
                found = f"{cls.name}: super().{node.attr}"
            elif isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                found = f"{cls.name}: {node.value.id}.{node.attr}"
        if found is not None and found not in seen:
            seen.add(found)
            yield found


def _scanned() -> Iterator[tuple[str, str]]:
    for top in ("streams", "connectors"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            for found in reaches(path.read_text()):
                yield name, found


def test_no_private_upstream_name_is_reached_for_outside_the_guarded_modules() -> None:
    found = set(_scanned())
    unexpected = sorted(r for r in found if r[0] not in GUARDED and r not in ALLOWED)
    assert not unexpected, (
        "a reach into a private Faust, mode or aiokafka name outside streams/faust_fixes.py "
        "(or streams/kafka/aiokafka_fixes.py): move it there behind a named function, "
        "fingerprint the upstream source in tests/streams/test_upstream_fingerprints.py and "
        "list it in docs/upgrading.md; or, if the name is our own, allow it here with the "
        f"reason: {unexpected}"
    )
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"allowed here but no longer in the code: remove them: {stale}"


def test_the_scan_finds_the_reaches_in_the_guarded_modules() -> None:
    # a scan that finds nothing proves nothing: it must see what the guarded modules do
    found = set(_scanned())
    for expected in [
        ("streams/faust_fixes.py", "faust.streams._current_event"),
        ("streams/faust_fixes.py", "cast(Any, consumer)._read_offset"),
        ("streams/faust_fixes.py", "_SeekThenResumeRecovery: self._set_recovery_ended"),
        ("streams/faust_fixes.py", "_ConsumerThread._commit"),
        ("streams/faust_fixes.py", "consumer._fetch_max_wait_ms"),
        ("streams/faust_fixes.py", "App: super()._on_partitions_assigned"),
        ("streams/kafka/aiokafka_fixes.py", "consumer._client"),
        ("streams/kafka/aiokafka_fixes.py", "producer._sender"),
    ]:
        assert expected in found, expected


def test_the_scan_catches_each_kind_of_reach() -> None:
    source = """
import faust
from faust.streams import _current_event
from aiokafka import AIOKafkaConsumer
from streams import faust_fixes

class Table(faust.Table):
    def _changelog_topic_name(self):
        return super()._changelog_topic_name()

class _Mixin:
    def _on_key_set(self, key, value):
        pass

class Mixed(_Mixin, faust.Table):
    pass

class Thread(faust_fixes.App):
    def run(self):
        return self._fetcher

def lag(consumer):
    return getattr(consumer, "_read_offset", {}), consumer._client
"""
    assert set(reaches(source)) == {
        "from faust.streams import _current_event",
        "Table._changelog_topic_name",
        "Table: super()._changelog_topic_name",
        "Thread: self._fetcher",
        "_Mixin._on_key_set",
        "getattr(..., '_read_offset')",
        "consumer._client",
    }
