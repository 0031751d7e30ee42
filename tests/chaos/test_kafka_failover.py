"""The fast chaos scenario in ``make test``: a shorter leader kill on the 3-node cluster.

kill -9 of the node leading most sync-events partitions while the bridge takes 150 req/s for
10 s (no worker, no restart: ``make chaos`` runs the full scenario).
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos import kafka


async def test_a_killed_partition_leader_loses_and_duplicates_no_accepted_delivery(
    tmp_path: Path,
) -> None:
    figures = await kafka.leader_kill(
        tmp_path,
        kafka.Load(rate=150, seconds=10, fault_at=3, apps=50),
        with_worker=False,
        restart=False,
        scenario="kafka-leader-kill-fast",
    )
    values = figures.values
    assert values["accepted"] == values["requests"] == 1500
    assert values["lost"] == 0
    assert values["duplicates"] == 0
    assert values["apps_last_not_latest"] == 0
    assert figures.broken() == []
