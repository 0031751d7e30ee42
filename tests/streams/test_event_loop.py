"""Choosing the event loop: uvloop when asked for and installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from streams.event_loop import loop_name, running_loop_name, uvloop_if_wanted


def test_the_uvloop_setting_gives_uvloop_and_its_loops_are_named_so() -> None:
    uvloop = uvloop_if_wanted("uvloop", "SYNCTRAIL_BRIDGE_EVENT_LOOP")
    assert uvloop is not None
    loop = uvloop.new_event_loop()
    try:
        assert loop_name(loop) == "uvloop"
    finally:
        loop.close()


def test_the_asyncio_setting_gives_asyncio_s_own_loop() -> None:
    assert uvloop_if_wanted("asyncio", "SYNCTRAIL_WORKER_EVENT_LOOP") is None
    loop = asyncio.new_event_loop()
    try:
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()


def test_without_uvloop_installed_the_process_warns_and_uses_asyncio(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    with caplog.at_level(logging.WARNING, logger="streams.event_loop"):
        assert uvloop_if_wanted("uvloop", "SYNCTRAIL_WORKER_EVENT_LOOP") is None
    assert "uvloop is not installed" in caplog.text
    assert caplog.records[0].__dict__["setting"] == "SYNCTRAIL_WORKER_EVENT_LOOP"


def test_outside_a_loop_there_is_no_running_loop_to_name() -> None:
    assert running_loop_name() is None


async def test_inside_a_loop_the_running_loop_is_named() -> None:
    assert running_loop_name() == "asyncio"  # pytest-asyncio runs tests on asyncio's loop
