"""Cost per fact of the DORA history (``streams.domain.dora``), and its stored size.

``python -m bench.dora`` plays one app's facts as the worker would apply them (each fact
recorded, then :func:`~streams.domain.dora.changes` asked what it changed), on a history already
holding the default window of deployments (so each new one folds the oldest):

- ``record_deployment_us``, ``record_health_us``: one fact applied;
- ``changes_us``: what that fact changed, per deployment;
- ``deployment_us``: record + changes of one deployment, the worker's cost per deployment;
- ``keys_us``: the keys over all time of one app (the query, not the hot path);
- ``history_bytes_<N>``: the JSON (``orjson.dumps``) of the history after ``N`` deployments
  (1, 10, 30 the default window, 50, and 200: the steady state, totals folded), each with a git
  SHA, a 32-hex delivery id and a commit date, every fifth followed by a Degraded and a Healthy
  transition.

Each figure is this process's CPU time (``time.process_time``: time spent waiting for a core
shared with other jobs is not counted), the minimum over ``--rounds`` rounds, in microseconds
per call. Output: ``BENCH <name> <value> <unit>`` lines.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streams.domain import dora

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SIZES = (1, 10, dora.DEFAULT_LIMIT, 50, 200)


def _sha(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def _deploy(history: Any, n: int) -> dict[str, Any]:
    """The arguments of the ``n``-th deployment (a deployment every 10 minutes)."""
    finished = T0 + timedelta(minutes=10 * n)
    revision = _sha(n)
    return {
        "delivery_id": hashlib.md5(str(n).encode()).hexdigest(),
        "finished_at": finished,
        "phase": "Failed" if n % 13 == 0 else "Succeeded",
        "revision": revision,
        "health": "Progressing",
        "commits": {revision: finished - timedelta(hours=2)},
    }


def play(deployments: int, start: int = 0, history: Any = None) -> Any:
    """A history after ``deployments`` deployments (from the ``start``-th on)."""
    for n in range(start, start + deployments):
        history = dora.record_deployment(history, **_deploy(history, n))
        if n % 5 == 4:
            at = T0 + timedelta(minutes=10 * n + 3)
            history = dora.record_health(history, "Degraded", at)
            history = dora.record_health(history, "Healthy", at + timedelta(minutes=4))
    return history


def _per_call(run: Callable[[], None], calls: int) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) / calls * 1e6


def _round(base: Any, facts: int) -> dict[str, float]:
    """One round: ``facts`` deployments (and as many Healthy reports) on ``base``."""
    args = [_deploy(None, 10_000 + n) for n in range(facts)]
    recorded: list[Any] = []

    def record() -> None:
        history = base
        for a in args:
            history = dora.record_deployment(history, **a)
            recorded.append(history)

    def changes() -> None:
        before = base
        for after in recorded:
            dora.changes(before, after)
            before = after

    health_at = [a["finished_at"] + timedelta(minutes=1) for a in args]

    def health() -> None:
        history = base
        for n, when in enumerate(health_at):
            history = dora.record_health(history, "Degraded" if n % 2 else "Healthy", when)

    now = T0 + timedelta(days=400)

    def keys() -> None:
        for _ in range(facts):
            dora.keys([base], now=now)

    return {
        "record_deployment_us": _per_call(record, facts),
        "changes_us": _per_call(changes, facts),
        "record_health_us": _per_call(health, facts),
        "keys_us": _per_call(keys, facts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dora", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="rounds (the minimum is reported)")
    parser.add_argument("--facts", type=int, default=200, help="deployments applied a round")
    args = parser.parse_args(argv)

    base = play(dora.DEFAULT_LIMIT)
    rounds = [_round(base, args.facts) for _ in range(args.rounds)]
    best = {name: min(r[name] for r in rounds) for name in rounds[0]}
    best["deployment_us"] = best["record_deployment_us"] + best["changes_us"]
    for name in ("record_deployment_us", "record_health_us", "changes_us", "deployment_us"):
        print(f"BENCH {name} {best[name]:.2f} us")
    print(f"BENCH keys_us {best['keys_us']:.2f} us")
    for size in SIZES:
        print(f"BENCH history_bytes_{size} {len(orjson.dumps(play(size)))} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
