"""The package graph and the size of functions (issue 16).

The import contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are checked by
import-linter, as ``lint-imports`` does from the repository root: the domain is pure, the Kafka
plumbing has no Faust, the layers (connectors over the Faust app over ``streams.kafka`` over
``streams.domain``), the bridge, Slack connector and exporter without Faust, no import cycle.
Import-linter reads the source, every ``import`` statement included (those inside functions and
under ``TYPE_CHECKING`` too); the subprocess tests below check what an import really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import REPO

#: No function (method, nested function) in streams/ or connectors/ may be longer than this.
MAX_FUNCTION_LINES = 80


def test_the_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_architectural_contract_is_declared():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"streams", "connectors"}
    assert config["include_external_packages"] is True  # else faust & co. cannot be forbidden
    contracts = {c["id"]: c for c in config["contracts"]}
    assert set(contracts) >= {
        "streams-without-connectors",
        "domain-pure",
        "kafka-without-faust",
        "layers",
        "edges-without-faust",
        "acyclic",
    }
    assert {"faust", "mode", "aiokafka", "aiohttp", "streams.kafka", "connectors"} <= set(
        contracts["domain-pure"]["forbidden_modules"]
    )
    assert {"faust", "mode"} <= set(contracts["kafka-without-faust"]["forbidden_modules"])
    assert {"faust", "mode"} <= set(contracts["edges-without-faust"]["forbidden_modules"])
    assert contracts["acyclic"]["type"] == "acyclic_siblings"
    assert set(contracts["acyclic"]["ancestors"]) == {"streams", "connectors"}
    for contract in contracts.values():
        assert not contract.get("ignore_imports"), f"{contract['id']} ignores imports"


def _loaded_after_importing(modules: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted({m.partition('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_bridge_the_slack_connector_or_the_exporter_does_not_load_faust():
    loaded = _loaded_after_importing(
        [
            "connectors.bridge.server",
            "connectors.slack.service",
            "connectors.exporter",
            "connectors.exporter.service",
        ]
    )
    assert "connectors" in loaded and "aiokafka" in loaded  # the imports did happen
    assert not loaded & {"faust", "mode"}


def test_importing_the_domain_loads_no_kafka_client_web_server_or_faust():
    domain = sorted(
        f"streams.domain.{path.stem}"
        for path in (REPO / "streams" / "domain").glob("*.py")
        if path.stem != "__init__"
    )
    assert "streams.domain.decide" in domain and "streams.domain.render" in domain
    loaded = _loaded_after_importing(domain)
    assert "streams" in loaded
    assert not loaded & {"faust", "mode", "aiokafka", "aiohttp"}


def function_lengths(source: str, where: str = "") -> list[tuple[int, str]]:
    """``(lines, name)`` of every function in ``source``, methods and nested ones included
    (``Class.method``, ``outer.inner``), counted from the ``def`` line to the body's last line
    (decorators not counted)."""
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                found.append(
                    (child.end_lineno - child.lineno + 1, f"{where}:{child.lineno} {name}")
                )
                walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return found


def test_function_lengths_count_methods_and_nested_functions():
    source = (
        "class A:\n    def m(self):\n        def inner():\n            pass\n        return 1\n"
    )
    assert sorted(function_lengths(source, "x.py")) == [
        (2, "x.py:3 A.m.inner"),
        (4, "x.py:2 A.m"),
    ]


def test_no_function_in_streams_or_connectors_is_longer_than_80_lines():
    lengths = [
        found
        for package in ("streams", "connectors")
        for path in sorted((REPO / package).rglob("*.py"))
        for found in function_lengths(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert len(lengths) > 500  # the walk found the code
    too_long = sorted((f for f in lengths if f[0] > MAX_FUNCTION_LINES), reverse=True)
    assert not too_long, "split these functions into named steps: " + ", ".join(
        f"{name} ({lines} lines)" for lines, name in too_long
    )
