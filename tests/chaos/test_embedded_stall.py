"""Issue 15 part 2 on the real (embedded) broker: a delivery is decided once, however a stall
makes the bridge append it.

The embedded broker frozen (SIGSTOP) for 10 s while the bridge takes bare bodies from 50 apps
(each posting in order, 100 req/s for 15 s) and the worker decides them; then SIGCONT.
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos import embedded


async def test_a_frozen_broker_yields_no_second_deployment_and_no_false_rollback(
    tmp_path: Path,
) -> None:
    figures = await embedded.stall_decisions(tmp_path)
    values = figures.values
    assert values["accepted"] == values["requests"]
    assert values["lost"] == 0
    assert values["deployments"] >= values["accepted"] - values["accepted_not_deployed"]
    assert values["second_deployments"] == 0
    assert values["false_rollbacks"] == 0
    assert figures.broken() == []
