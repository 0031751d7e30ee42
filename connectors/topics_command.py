"""``synctrail topics create``: every synctrail topic, with the configured partitions and
replication factor, over the configured connection (TLS, SASL).

Idempotent: existing topics are left untouched (never altered, even when they differ; ``--check``
says how). ``--check`` creates nothing: it exits 1 when a topic is missing or has another
partition count, replication factor or ``cleanup.policy`` than synctrail wants. This is what
compose's ``topics`` service and a Kubernetes Job (or an Argo CD PreSync hook) run before the
processes start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from streams import logs
from streams.kafka.setup import check_topics, create_topics, planned_topics
from streams.settings import WorkerSettings

EXIT_MISMATCH = 1


async def _run(settings: WorkerSettings, check: bool) -> int:
    plans = planned_topics(settings)
    if check:
        problems = await check_topics(settings, plans)
        for problem in problems:
            print(f"mismatch: {problem}", file=sys.stderr)
        if problems:
            return EXIT_MISMATCH
        print(f"all {len(plans)} topics exist as configured")
        return 0
    created = set(await create_topics(settings, plans))
    for plan in plans:
        state = "created" if plan.name in created else "exists"
        print(
            f"{state} {plan.name} (partitions {plan.partitions}, replication factor "
            f"{plan.replication_factor}, cleanup.policy {plan.cleanup_policy})"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``synctrail topics``."""
    settings = WorkerSettings()
    logs.configure(settings.log_level, settings.log_format)
    return asyncio.run(_run(settings, check=bool(args.check)))
