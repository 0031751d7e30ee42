"""Which offsets may be committed when records finish out of order (pure).

Records of one partition are posted by different channel lanes, so they can finish in any
order. A partition's committable offset is one past the longest run of finished records from
its start: committing further would skip a record still in flight if the process died.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class _Partition:
    pending: deque[int] = field(default_factory=deque)  # offsets in fetch order
    done: set[int] = field(default_factory=set)
    committable: int | None = None  # next offset to commit (one past the last finished run)
    committed: int | None = None


class OffsetTracker(Generic[P]):
    """Tracks in-flight offsets per partition and what can be committed."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}

    def add(self, partition: P, offset: int) -> None:
        """A record was handed to a lane."""
        self._parts.setdefault(partition, _Partition()).pending.append(offset)

    def done(self, partition: P, offset: int) -> None:
        """A record finished (posted, skipped or dead-lettered)."""
        part = self._parts.get(partition)
        if part is None:
            return  # the partition was revoked meanwhile; its offsets are someone else's now
        part.done.add(offset)
        while part.pending and part.pending[0] in part.done:
            finished = part.pending.popleft()
            part.done.discard(finished)
            part.committable = finished + 1

    def in_flight(self, partitions: Iterable[P] | None = None) -> int:
        """Records handed out and not finished, over ``partitions`` (default: all)."""
        keys = self._parts.keys() if partitions is None else partitions
        return sum(len(self._parts[p].pending) for p in keys if p in self._parts)

    def first_pending(self, partition: P) -> int | None:
        """The oldest unfinished offset of ``partition``."""
        part = self._parts.get(partition)
        return part.pending[0] if part and part.pending else None

    def to_commit(self) -> dict[P, int]:
        """Offsets that advanced since the last ``committed`` call."""
        return {
            p: part.committable
            for p, part in self._parts.items()
            if part.committable is not None and part.committable != part.committed
        }

    def committed(self, offsets: dict[P, int]) -> None:
        """Record that ``offsets`` were committed."""
        for p, offset in offsets.items():
            if p in self._parts:
                self._parts[p].committed = offset

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop revoked partitions."""
        for p in partitions:
            self._parts.pop(p, None)
