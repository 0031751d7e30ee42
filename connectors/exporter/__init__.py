"""``synctrail exporter``: fold ``<prefix>metrics`` and ``<prefix>dead-letters`` into /metrics.

The modules: ``settings`` (SYNCTRAIL_EXPORTER_*), ``fold`` (events → series, no I/O) and
``service`` (Kafka replay from the beginning, HTTP endpoints, signals).
"""

from __future__ import annotations

import argparse
import asyncio


def run(args: argparse.Namespace) -> int:
    """Run the exporter until SIGTERM/SIGINT."""
    from prometheus_client import disable_created_metrics

    from connectors.exporter.service import serve
    from connectors.exporter.settings import ExporterSettings
    from streams import logs

    # `_created` samples would differ after every restart although the history is the same.
    disable_created_metrics()
    settings = ExporterSettings()
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings))
