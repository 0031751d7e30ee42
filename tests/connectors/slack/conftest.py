"""Fixtures for the Slack connector's tests: a local Slack-compatible server per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.slack_server import SlackServer

TOKEN = "xoxb-test-token"


@pytest.fixture
async def slack_server() -> AsyncIterator[SlackServer]:
    """A fresh Slack-compatible server on a free loopback port (token ``TOKEN``)."""
    server = SlackServer(token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
