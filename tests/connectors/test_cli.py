"""``synctrail --help``: every service's help lists the variables it reads."""

from __future__ import annotations

import pytest

from connectors.cli import build_parser
from connectors.settings_doc import PROCESSES

SERVICES = [(process, cls) for process, cls in PROCESSES if process != "all"]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("process", "cls"), SERVICES, ids=[p for p, _ in SERVICES])
def test_service_help_lists_every_variable_it_reads(capsys, process, cls):
    text = _help(capsys, process)
    for name in cls.model_fields:  # the common ones too: every settings class inherits them
        assert f"SYNCTRAIL_{name.upper()}  (default: " in text, name


def test_a_service_help_leaves_out_other_services_variables(capsys):
    text = _help(capsys, "bridge")
    assert "SYNCTRAIL_BRIDGE_TOKENS" in text
    assert "SYNCTRAIL_SLACK_TOKEN" not in text and "SYNCTRAIL_WORKER_WEB_PORT" not in text


def test_commands_without_settings_keep_plain_help(capsys):
    assert "SYNCTRAIL_" not in _help(capsys, "tail").split("options:")[1]
