"""The package graph (issue 16).

The import contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are checked by
import-linter, as ``lint-imports`` does from the repository root: the domain is pure, the Kafka
plumbing has no Faust, the layers (connectors over the Faust app over ``streams.kafka`` over
``streams.domain``), the bridge, Slack connector and exporter without Faust, no import cycle.
Import-linter reads the source, every ``import`` statement included (those inside functions and
under ``TYPE_CHECKING`` too); the subprocess tests below check what an import really loads.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import REPO


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
