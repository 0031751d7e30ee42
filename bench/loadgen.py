"""What the benchmarks' load generators share."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_collector_pauses() -> Iterator[None]:
    """Keep the load generator's own garbage collections out of the measured latencies.

    An open-loop client keeps every request's task and result until the run ends, so its
    full collections grow with the run: 45-57 ms pauses were measured in the middle of 8 s runs,
    and every request in flight then seemed 50 ms slower, which alone made a p99. The client
    collects and freezes once before the run and not during it; the system under test keeps
    its usual collector.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
