"""``synctrail broker``: only the embedded broker, on loopback, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from connectors.broker import EmbeddedBroker
from streams import logs
from streams.kafka.setup import ensure_topics
from streams.settings import CommonSettings


async def _serve(args: argparse.Namespace, settings: CommonSettings) -> None:
    broker = EmbeddedBroker(port=args.port, host=args.host)
    await broker.start()
    try:
        await ensure_topics(
            broker.bootstrap,
            settings.topic_prefix,
            settings.partitions,
            settings.replication_factor,
        )
        print(
            f"embedded broker listening on {broker.bootstrap} (log: {broker.log_path})", flush=True
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        broker.stop()


def run(args: argparse.Namespace) -> int:
    """Run the embedded broker until interrupted."""
    settings = CommonSettings()
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(_serve(args, settings))
    return 0
