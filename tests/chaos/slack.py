"""Slack connector kill -9 (issue 15 part 4): API mode against the local Slack server
(``tests.slack_server``), console mode to its log; twice each, mid-stream.

API mode must post every notification exactly once (the connector looks an interrupted post up
in the channel's history before posting again). Console mode has no history to ask: what it
printed between its last offset commit and the kill is printed again (reported, bounded by
what one commit interval can hold).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from tests.chaos.harness import Figures, note
from tests.connectors.slack.support import notification, produce_notes, slack_env
from tests.slack_server import SlackServer
from tests.support import Service, wait_for

PREFIX = "chaos."
NOTES, CHANNELS = 600, 12
KILLS = (0.3, 0.6)


def _notes() -> list[dict]:
    return [
        notification(
            f"note-{i:04d}", channel=f"#chan-{i % CHANNELS:02d}", app=f"app-{i % CHANNELS:02d}"
        )
        for i in range(NOTES)
    ]


async def slack_kill(directory: Path, *, console: bool = False) -> Figures:
    """kill -9 of ``synctrail slack`` at 30 % and 60 % of 600 notifications over 12 channels."""
    scenario = "slack-kill-console" if console else "slack-kill-api"
    figures = Figures(scenario)
    started = time.monotonic()
    broker = EmbeddedBroker(log_path=directory / "broker.log")
    server = SlackServer()
    services: list[Service] = []
    try:
        await broker.start()
        await ensure_topics(broker.bootstrap, PREFIX, 8)
        await server.start()
        await produce_notes(broker.bootstrap, PREFIX, _notes())
        extra = {"SYNCTRAIL_SLACK_TOKEN": "", "SYNCTRAIL_SLACK_WEBHOOK_URL": ""} if console else {}
        env = slack_env(broker.bootstrap, PREFIX, server, **extra)
        note(f"{scenario}: {NOTES} notifications over {CHANNELS} channels; kill -9 at {KILLS}")

        def start() -> Service:
            service = Service(["slack"], env, directory / f"slack-{len(services)}.log").start()
            services.append(service)
            return service

        def delivered() -> Counter[str]:
            if not console:
                return Counter(p.key for p in server.posts() if p.key)
            printed: Counter[str] = Counter()
            for service in services:
                printed.update(re.findall(r"deployed (note-\d{4})", service.log()))
            return printed

        current = start()
        for share in KILLS:
            await wait_for(
                lambda share=share: len(delivered()) >= share * NOTES,
                timeout=120,
                interval=0.05,
                what=f"{share:.0%} delivered",
            )
            current.kill()
            figures.put(f"delivered_at_kill_at_{share:.0%}", len(delivered()))
            current = start()
        await wait_for(
            lambda: len(delivered()) >= NOTES, timeout=180, interval=0.2, what="every note"
        )
        code = current.stop()
        counts = delivered()
        figures.put("notifications", NOTES)
        figures.put("delivered", len(counts))
        figures.put("lost", NOTES - len(counts))
        figures.put("delivered_twice", sum(n - 1 for n in counts.values() if n > 1))
        figures.put("last_exit_code", code if code is not None else -1)
    finally:
        for service in services:
            service.kill()
        await server.stop()
        broker.stop(timeout_s=0.5)
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("last_exit_code", "==", 0)
    for share in KILLS:  # each kill mid-stream
        figures.bound(f"delivered_at_kill_at_{share:.0%}", "<=", NOTES - 1)
    if not console:
        figures.bound("delivered_twice", "==", 0)
    return figures
