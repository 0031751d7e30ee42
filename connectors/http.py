"""The small HTTP servers of the Slack connector and the exporter (metrics, health)."""

from __future__ import annotations

import logging

from aiohttp import web


async def start_http(app: web.Application, host: str, port: int, what: str) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` and log ``"<what> listening"``; the caller cleans the
    returned runner up (``await runner.cleanup()``) when it stops."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logging.getLogger(__name__).info(f"{what} listening", extra={"host": host, "port": port})
    return runner
