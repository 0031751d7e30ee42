"""bench/validation.py stays runnable; speed is never asserted (no broker)."""

from __future__ import annotations

import re

import pytest


def test_the_validation_benchmark_runs_every_contender_on_every_payload(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import validation

    assert validation.main(["--rounds", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    figures = set(re.findall(r"^BENCH validation\.(\w+)_us_per_body \d", out, re.M))
    for contender in ("bridge", "msgspec_convert", "pydantic_python", "pydantic_json"):
        assert contender in figures
    assert "refusal_bridge" in figures
