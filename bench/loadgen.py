"""What the benchmarks' load generators and measurements share."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (``/proc/<pid>/stat``)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
