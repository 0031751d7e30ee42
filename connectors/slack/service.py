"""Process entry point of ``synctrail slack``: settings, logging, /metrics, signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from connectors.http import start_http
from connectors.slack.connector import Connector
from connectors.slack.metrics import make_app
from connectors.slack.settings import SlackSettings
from streams import logs

log = logging.getLogger(__name__)


async def serve(settings: SlackSettings, stop: asyncio.Event | None = None) -> int:
    """Run the connector and its HTTP endpoints until ``stop`` (or SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    connector = Connector(settings)
    runner = await start_http(
        make_app(connector.metrics, lambda: connector.consuming),
        settings.slack_metrics_host,
        settings.slack_metrics_port,
        "slack metrics",
    )
    try:
        return await connector.run(stop)
    finally:
        await runner.cleanup()
        log.info("slack connector stopped")


async def _main(settings: SlackSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await serve(settings, stop)


def run(args: argparse.Namespace) -> int:
    """``synctrail slack``: post notifications until SIGTERM/SIGINT."""
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    settings = SlackSettings()
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(_main(settings))
