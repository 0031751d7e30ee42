"""promtool accepts the Prometheus config and the alert rules, and the rules' unit tests pass.

promtool comes from Debian's `prometheus` package; without it these tests FAIL (they never
skip) and say how to install it.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.compose.promharness import ALERTS, PROMETHEUS_CONFIG, BinaryMissing, binary
from tests.support import REPO


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        exe = binary("promtool")
    except BinaryMissing as exc:
        pytest.fail(str(exc))
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_promtool_accepts_the_prometheus_config_and_its_rule_files():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_when_and_only_when_their_unit_tests_say():
    result = promtool("test", "rules", str(REPO / "tests" / "compose" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
