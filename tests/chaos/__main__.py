"""``python -m tests.chaos [scenario ...]``: run chaos scenarios, print CHAOS lines, judge bounds.

Without arguments every scenario runs, one after another, each in a temporary directory of
its own (kept with ``--keep`` for the processes' logs). Exit status 1 when any figure breaks
its bound, 2 when a scenario could not run to its end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tests.chaos import clients, embedded, kafka, slack, worker
from tests.chaos.harness import Figures

Scenario = Callable[[Path], Coroutine[Any, Any, Figures]]

SCENARIOS: dict[str, Scenario] = {
    "kafka-leader-kill": kafka.leader_kill,
    "kafka-controlled-shutdown": kafka.controlled_shutdown,
    "kafka-stall": kafka.stall,
    "kafka-stall-no-idempotence": lambda d: kafka.stall(
        d, idempotence="off", scenario="kafka-stall-no-idempotence"
    ),
    # issue 15's embedded-broker scenarios join here
    "embedded-stall": lambda d: kafka.stall(d, embedded=True, scenario="embedded-stall"),
    "embedded-stall-decisions": embedded.stall_decisions,
    "embedded-broker-kill": embedded.broker_kill,
    "bridge-kill-mid-drain": embedded.bridge_kill_mid_drain,
    "slow-clients": clients.slow_clients,
    "slack-kill-api": slack.slack_kill,
    "slack-kill-console": lambda d: slack.slack_kill(d, console=True),
    "worker-kill-embedded-at-least-once": lambda d: worker.kill_on_backlog(d),
    "worker-kill-kafka-at-least-once": lambda d: worker.kill_on_backlog(d, broker="kafka"),
    "worker-kill-kafka-exactly-once": lambda d: worker.kill_on_backlog(
        d, broker="kafka", guarantee="exactly_once"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help="scenarios to run (default: all)")
    parser.add_argument("--list", action="store_true", help="name the scenarios and exit")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's directory")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (see --list)")
    status = 0
    for name in args.scenarios or list(SCENARIOS):
        directory = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
        started = time.monotonic()
        try:
            figures = asyncio.run(SCENARIOS[name](directory))
        except Exception:
            traceback.print_exc()
            print(f"CHAOS {name} failed_to_run 1 (logs in {directory})", flush=True)
            status = max(status, 2)
            continue
        broken = figures.broken()
        for item in broken:
            print(f"CHAOS {name} BOUND_BROKEN {item}", flush=True)
        verdict = "ok" if not broken else "broken"
        print(f"CHAOS {name} verdict {verdict} ({time.monotonic() - started:.0f}s)", flush=True)
        if broken:
            status = max(status, 1)
        if args.keep or broken:
            print(f"chaos: logs of {name} in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
