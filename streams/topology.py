"""The worker, composed in one place: the Faust app with its topics and tables
(:mod:`streams.app`), the agent over sync-events (:mod:`streams.agents`) with the writer the
processing guarantee asks for, and the web views (:mod:`streams.views`).

- ``at_least_once``: :func:`streams.agents.process_sync_events` writes through
  :class:`streams.agents.Flusher`, and a replay guard reads the output partitions back after
  each assignment (:mod:`streams.replay`);
- ``exactly_once``: :func:`streams.transactions.process_transactionally` writes through a
  :class:`streams.transactions.TransactionalFlusher`, whose producers are (re)started before
  Faust handles each assignment.

Nothing imports this module but the worker's entry point (and tests): the modules it composes
take what they need as arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from streams import agents, views
from streams.app import Topology, declare
from streams.settings import WorkerSettings
from streams.transactions import TransactionalFlusher, process_transactionally


def build(settings: WorkerSettings | None = None) -> Topology:
    """Create the Faust app with its topics, tables, agent, timer and web views."""
    topology = declare(settings or WorkerSettings())
    agents.register(topology, _agent_body(topology))
    views.register(topology)
    return topology


def _agent_body(topology: Topology) -> Callable[[Any], Awaitable[None]]:
    """What the agent does with its stream, by processing guarantee (see the module docstring)."""
    if topology.settings.processing_guarantee == "exactly_once":
        flusher = TransactionalFlusher(topology)
        topology.app.before_assignment.append(flusher.on_assignment)
        return functools.partial(process_transactionally, flusher)
    agents.guard_replays(topology)
    return functools.partial(agents.process_sync_events, topology)
